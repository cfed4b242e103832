"""Downloads against a real HTTP server on 127.0.0.1 (Range, faults), and safe extraction."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import pytest

from pipelines.stages.download import (
    ChecksumError,
    DownloadConfig,
    DownloadError,
    UnsafeArchiveError,
    archive_stem,
    download,
    extract,
)

FAST = DownloadConfig(retries=3, backoff_s=0.01, timeout_s=5.0, chunk_bytes=4096, progress=False)
PAYLOAD = bytes(range(256)) * 800  # 204,800 bytes, not all equal, so corruption is visible


class TestDownload:
    def test_full_download_is_verified_and_renamed(self, corpus_server, corpora, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        dest = tmp_path / "data.bin"
        result = download(url, dest, size=len(PAYLOAD), sha256=corpora.sha256(PAYLOAD), config=FAST)
        assert dest.read_bytes() == PAYLOAD
        assert result.sha256 == corpora.sha256(PAYLOAD)
        assert result.fetched_bytes == len(PAYLOAD) and not result.skipped
        assert not (tmp_path / "data.bin.part").exists()
        assert corpus_server.bytes_sent("data.bin") == len(PAYLOAD)

    def test_second_call_fetches_nothing(self, corpus_server, corpora, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        download(url, tmp_path / "data.bin", sha256=corpora.sha256(PAYLOAD), config=FAST)
        corpus_server.reset_counts()
        again = download(url, tmp_path / "data.bin", sha256=corpora.sha256(PAYLOAD), config=FAST)
        assert again.skipped and again.fetched_bytes == 0
        assert corpus_server.requests_for("data.bin") == []

    def test_cut_connection_resumes_within_one_call(self, corpus_server, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        corpus_server.fault("data.bin", "cut", after=70_000)
        result = download(url, tmp_path / "data.bin", size=len(PAYLOAD), config=FAST)
        assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
        ranges = [r[1] for r in corpus_server.requests_for("data.bin")]
        assert ranges == [None, "bytes=70000-"]
        # Only the missing part was fetched again.
        assert corpus_server.bytes_sent("data.bin") == len(PAYLOAD) == result.fetched_bytes

    def test_interrupted_download_resumes_in_a_later_call(self, corpus_server, corpora, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        dest = tmp_path / "data.bin"
        corpus_server.fault("data.bin", "cut", after=120_000)
        with pytest.raises(DownloadError, match="giving up"):
            # retries=0: the process "dies" after the cut, leaving a .part behind.
            download(url, dest, sha256=corpora.sha256(PAYLOAD), config=DownloadConfig(retries=0, progress=False))
        assert not dest.exists()
        assert (tmp_path / "data.bin.part").stat().st_size == 120_000
        corpus_server.reset_counts()
        download(url, dest, sha256=corpora.sha256(PAYLOAD), config=FAST)
        assert dest.read_bytes() == PAYLOAD
        assert corpus_server.bytes_sent("data.bin") == len(PAYLOAD) - 120_000 < len(PAYLOAD)
        assert corpus_server.requests_for("data.bin")[0][1] == "bytes=120000-"

    def test_server_ignoring_range_restarts_cleanly(self, corpus_server, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        corpus_server.fault("data.bin", "cut", after=50_000)
        corpus_server.fault("data.bin", "ignore_range")
        download(url, tmp_path / "data.bin", size=len(PAYLOAD), config=FAST)
        assert (tmp_path / "data.bin").read_bytes() == PAYLOAD

    def test_corrupt_bytes_are_caught_by_the_checksum(self, corpus_server, corpora, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        corpus_server.fault("data.bin", "corrupt", times=None)
        with pytest.raises(ChecksumError, match="sha256 mismatch"):
            download(url, tmp_path / "data.bin", sha256=corpora.sha256(PAYLOAD), config=FAST)
        assert not (tmp_path / "data.bin").exists()  # a bad file never gets the final name
        assert not (tmp_path / "data.bin.part").exists()
        assert len(corpus_server.requests_for("data.bin")) == FAST.retries + 1

    def test_one_corrupt_transfer_is_downloaded_again(self, corpus_server, corpora, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        corpus_server.fault("data.bin", "corrupt", times=1)
        download(url, tmp_path / "data.bin", sha256=corpora.sha256(PAYLOAD), config=FAST)
        assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
        assert len(corpus_server.requests_for("data.bin")) == 2

    def test_wrong_expected_size_is_an_error(self, corpus_server, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        with pytest.raises(ChecksumError, match=f"expected {len(PAYLOAD) + 1}"):
            download(url, tmp_path / "data.bin", size=len(PAYLOAD) + 1, config=FAST)
        assert not (tmp_path / "data.bin").exists()

    def test_404_fails_at_once_with_a_clear_error(self, corpus_server, tmp_path):
        with pytest.raises(DownloadError, match=r"HTTP 404 .*not retried"):
            download(corpus_server.url("missing.bin"), tmp_path / "missing.bin", config=FAST)
        assert len(corpus_server.requests_for("missing.bin")) == 1
        assert not list(tmp_path.iterdir())

    def test_500_is_retried_then_reported(self, corpus_server, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        corpus_server.fault("data.bin", "status", status=500, times=None)
        with pytest.raises(DownloadError, match=r"giving up after 4 failed attempts: HTTP 500"):
            download(url, tmp_path / "data.bin", config=FAST)
        assert len(corpus_server.requests_for("data.bin")) == FAST.retries + 1
        assert not (tmp_path / "data.bin").exists()

    def test_transient_500_then_success(self, corpus_server, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        corpus_server.fault("data.bin", "status", status=503, times=2)
        download(url, tmp_path / "data.bin", config=FAST)
        assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
        assert [r[2] for r in corpus_server.requests_for("data.bin")] == [503, 503, 200]

    def test_stalled_server_times_out_and_is_retried(self, corpus_server, tmp_path):
        url = corpus_server.add("data.bin", PAYLOAD)
        corpus_server.fault("data.bin", "stall", stall_s=1.5)
        config = DownloadConfig(retries=2, backoff_s=0.01, timeout_s=0.5, progress=False)
        download(url, tmp_path / "data.bin", size=len(PAYLOAD), config=config)
        assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
        assert len(corpus_server.requests_for("data.bin")) == 2

    def test_connection_refused_is_retried_then_reported(self, tmp_path):
        config = DownloadConfig(retries=1, backoff_s=0.01, timeout_s=1.0, progress=False)
        with pytest.raises(DownloadError, match="connection failed"):
            download("http://127.0.0.1:9/nothing", tmp_path / "x", config=config)

    def test_bad_config_is_rejected(self):
        with pytest.raises(ValueError, match="invalid DownloadConfig"):
            DownloadConfig(timeout_s=0)


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def _zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777 << 16)  # S_IFLNK
    return info, target.encode()


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for m in members:
            payload = (data or {}).get(m.name)
            if payload is not None:
                m.size = len(payload)
            tf.addfile(m, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = link
    return m


UNSAFE = {
    "zip_dotdot": ("a.zip", lambda: _zip([("ok.txt", b"ok"), ("../evil.txt", b"x")]), "contains '..'"),
    "zip_absolute": ("a.zip", lambda: _zip([("/tmp/evil.txt", b"x")]), "absolute path"),
    "zip_symlink_out": ("a.zip", lambda: _zip([_zip_symlink("link", "../../etc")]), "links outside"),
    "tar_dotdot": ("a.tar.gz", lambda: _tar([_member("d/../../evil.txt")], {"d/../../evil.txt": b"x"}),
                   "contains '..'"),
    "tar_absolute": ("a.tar.gz", lambda: _tar([_member("/etc/evil")], {"/etc/evil": b"x"}), "absolute path"),
    "tar_symlink_out": ("a.tar.gz", lambda: _tar([_member("d/link", tarfile.SYMTYPE, "../../outside")]),
                        "links outside"),
    "tar_symlink_abs": ("a.tar.gz", lambda: _tar([_member("link", tarfile.SYMTYPE, "/etc/passwd")]),
                        "absolute path"),
    "tar_hardlink_out": ("a.tar.gz", lambda: _tar([_member("h", tarfile.LNKTYPE, "../secret")]), "links outside"),
    "tar_device": ("a.tar.gz", lambda: _tar([_member("dev", tarfile.CHRTYPE)]), "device"),
}


class TestExtract:
    @pytest.mark.parametrize("case", sorted(UNSAFE))
    def test_members_escaping_the_target_are_refused(self, tmp_path, case):
        name, build, message = UNSAFE[case]
        archive = tmp_path / name
        archive.write_bytes(build())
        target = tmp_path / "box" / "out"
        with pytest.raises(UnsafeArchiveError, match=message):
            extract(archive, target)
        # Nothing was written: not the target, not its temp folder, nothing outside.
        assert not target.exists() and not (tmp_path / "box" / "out.extracting").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "box"])
        assert not (tmp_path / "evil.txt").exists()

    def test_zip_and_tar_extract_with_inside_links(self, tmp_path):
        z = tmp_path / "good.zip"
        z.write_bytes(_zip([("top/a.txt", b"A"), ("top/sub/b.txt", b"B"), _zip_symlink("top/ln", "sub/b.txt")]))
        out = extract(z, tmp_path / "z")
        assert (out / "top" / "a.txt").read_bytes() == b"A"
        assert (out / "top" / "ln").read_bytes() == b"B" and (out / "top" / "ln").is_symlink()

        t = tmp_path / "good.tar.gz"
        t.write_bytes(_tar([_member("top/a.txt"), _member("top/ln", tarfile.SYMTYPE, "a.txt"),
                            _member("top/hard", tarfile.LNKTYPE, "top/a.txt")], {"top/a.txt": b"A"}))
        out = extract(t, tmp_path / "t")
        assert (out / "top" / "ln").read_bytes() == b"A"
        assert (out / "top" / "hard").read_bytes() == b"A"

    def test_existing_target_is_left_alone(self, tmp_path):
        z = tmp_path / "good.zip"
        z.write_bytes(_zip([("a.txt", b"A")]))
        target = tmp_path / "out"
        target.mkdir()
        (target / "mine.txt").write_text("keep")
        extract(z, target)
        assert sorted(os.listdir(target)) == ["mine.txt"]

    def test_not_an_archive(self, tmp_path):
        f = tmp_path / "x.zip"
        f.write_bytes(b"plain bytes")
        with pytest.raises(ValueError, match="neither a zip nor a tar"):
            extract(f, tmp_path / "out")

    @pytest.mark.parametrize("name, stem", [("a.zip", "a"), ("b.tar.gz", "b"), ("c.tgz", "c"),
                                            ("raw_30s_audio-00.tar", "raw_30s_audio-00"), ("d.tsv", None)])
    def test_archive_stem(self, name, stem):
        assert archive_stem(name) == stem
