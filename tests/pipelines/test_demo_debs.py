"""`.deb` / ar / tar handling of the demo corpus, on tiny archives made here (no apt, no network)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from pipelines.demo import debs


def _tar_bytes(members: dict[str, bytes], mode: str = "w:gz", links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def _ar_header(name: str, size: int) -> bytes:
    return f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{size:<10}`\n".encode("ascii")


def _ar(members: list[tuple[str, bytes]], bsd: bool = False) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        if bsd:  # BSD long-name form: "#1/<len>" and the name leads the data
            out += _ar_header(f"#1/{len(name)}", len(name) + len(data)) + name.encode() + data
            size = len(name) + len(data)
        else:
            out += _ar_header(name + "/", len(data)) + data
            size = len(data)
        if size % 2:
            out += b"\n"
    return bytes(out)


def make_deb(path: Path, files: dict[str, bytes], compression: str = "gz", links=None) -> Path:
    mode = {"gz": "w:gz", "xz": "w:xz"}[compression]
    data = _tar_bytes(files, mode, links)
    control = _tar_bytes({"./control": b"Package: fake\n"})
    path.write_bytes(
        _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", control), (f"data.tar.{compression}", data)])
    )
    return path


class TestAr:
    def test_members_offsets_and_odd_padding(self, tmp_path):
        path = tmp_path / "x.a"
        path.write_bytes(_ar([("odd", b"abc"), ("even", b"wxyz")]))
        members = debs.read_ar_members(path)
        assert [m.name for m in members] == ["odd", "even"]
        raw = path.read_bytes()
        assert raw[members[0].offset : members[0].offset + members[0].size] == b"abc"
        assert raw[members[1].offset : members[1].offset + members[1].size] == b"wxyz"

    def test_bsd_long_names(self, tmp_path):
        path = tmp_path / "bsd.a"
        path.write_bytes(_ar([("a_rather_long_member_name.txt", b"hello")], bsd=True))
        (m,) = debs.read_ar_members(path)
        assert m.name == "a_rather_long_member_name.txt" and m.size == 5
        assert path.read_bytes()[m.offset : m.offset + m.size] == b"hello"

    def test_not_ar_and_truncated(self, tmp_path):
        bad = tmp_path / "bad.deb"
        bad.write_bytes(b"PK\x03\x04 not an ar")
        with pytest.raises(debs.DebError, match="bad magic"):
            debs.read_ar_members(bad)
        cut = tmp_path / "cut.deb"
        cut.write_bytes(_ar([("debian-binary", b"2.0\n" * 50)])[:-20])
        with pytest.raises(debs.DebError, match="truncated"):
            debs.read_ar_members(cut)


class TestExtractDeb:
    @pytest.mark.parametrize("compression", ["gz", "xz"])
    def test_unpacks_data_with_spaces_in_names(self, tmp_path, compression):
        deb = make_deb(
            tmp_path / "kit.deb",
            {
                "./usr/share/hydrogen/data/drumkits/The Kit 1.0/drumkit.xml": b"<drumkit_info/>",
                "./usr/share/hydrogen/data/drumkits/The Kit 1.0/kick.wav": b"RIFF",
                "./usr/bin/hydrogen": b"binary",
            },
            compression,
            links={"./usr/share/doc/kit/demo": "../../hydrogen/data"},
        )
        dest = tmp_path / "root"
        n = debs.extract_deb(deb, dest, prefixes=("usr/share/",))
        kit = dest / "usr/share/hydrogen/data/drumkits/The Kit 1.0"
        assert n == 2
        assert (kit / "drumkit.xml").read_bytes() == b"<drumkit_info/>"
        assert not (dest / "usr/bin/hydrogen").exists()  # outside the prefixes
        assert (dest / "usr/share/doc/kit/demo").is_symlink()

    def test_zstd_member(self, tmp_path, monkeypatch):
        # Python 3.11 has no zstd: stand in an identity "decompressor" over a plain tar.
        data = _tar_bytes({"./usr/share/a.txt": b"zst"}, mode="w")
        deb = tmp_path / "z.deb"
        deb.write_bytes(_ar([("debian-binary", b"2.0\n"), ("data.tar.zst", data)]))
        monkeypatch.setattr(debs, "_zstd_decompressor", lambda: lambda raw: raw)
        assert debs.extract_deb(deb, tmp_path / "out") == 1
        assert (tmp_path / "out/usr/share/a.txt").read_bytes() == b"zst"
        # Without zstd support the fallback is dpkg-deb; without that either, a clear error.
        monkeypatch.setattr(debs, "_zstd_decompressor", lambda: None)
        monkeypatch.setattr(debs.shutil, "which", lambda name: None)
        with pytest.raises(debs.DebError, match="neither zstd support nor dpkg-deb"):
            debs.extract_deb(deb, tmp_path / "out2")

    def test_corrupt_data_member(self, tmp_path):
        path = tmp_path / "corrupt.deb"
        path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("data.tar.xz", b"definitely not xz")]))
        with pytest.raises(debs.DebError, match="cannot decompress data.tar.xz"):
            debs.extract_deb(path, tmp_path / "out")
        path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("data.tar", b"not a tar either" * 40)]))
        with pytest.raises(debs.DebError, match="not a readable tar"):
            debs.extract_deb(path, tmp_path / "out")

    def test_no_data_member(self, tmp_path):
        path = tmp_path / "nodata.deb"
        path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.gz", b"")]))
        with pytest.raises(debs.DebError, match="no data.tar"):
            debs.extract_deb(path, tmp_path / "out")

    @pytest.mark.parametrize(
        "files, links",
        [
            ({"./../../evil.txt": b"x"}, None),
            ({"/etc/evil.txt": b"x"}, None),
            ({"./ok/../../evil.txt": b"x"}, None),
            ({"./ok.txt": b"x"}, {"./usr/escape": "../../../../etc/passwd"}),
            ({"./ok.txt": b"x"}, {"./usr/abs": "/etc/passwd"}),
        ],
    )
    def test_traversal_members_refused_before_writing(self, tmp_path, files, links):
        deb = make_deb(tmp_path / "evil.deb", {"./usr/share/first.txt": b"a", **files}, links=links)
        dest = tmp_path / "target" / "root"
        with pytest.raises(debs.UnsafeArchiveError, match="escapes"):
            debs.extract_deb(deb, dest)
        assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "target" / "evil.txt").exists()
        assert not (dest / "usr/share/first.txt").exists()  # nothing written: checked up front

    def test_h2drumkit_archive(self, tmp_path):
        archive = tmp_path / "My Kit.h2drumkit"
        archive.write_bytes(_tar_bytes({"My Kit/drumkit.xml": b"<drumkit_info/>", "My Kit/a.wav": b"RIFF"}))
        folder = debs.extract_h2drumkit(archive, tmp_path / "kits")
        assert folder.name == "My Kit" and folder.parent.name == "kits"
        assert (folder / "a.wav").read_bytes() == b"RIFF"
        evil = tmp_path / "evil.h2drumkit"
        evil.write_bytes(_tar_bytes({"../outside.xml": b"x"}))
        with pytest.raises(debs.UnsafeArchiveError):
            debs.extract_h2drumkit(evil, tmp_path / "kits2")


def _fake_apt(bin_dir: Path, log: Path, deb_source: Path, need_update: bool) -> None:
    """An `apt-get` that copies a prepared .deb for `download`, optionally only after `update`."""
    lists = bin_dir / "lists_ready"
    if not need_update:
        lists.write_text("")
    script = f"""#!/bin/sh
echo "$@" >> "{log}"
if [ "$1" = "update" ]; then touch "{lists}"; exit 0; fi
if [ "$1" = "download" ]; then
  if [ ! -e "{lists}" ]; then echo "E: Unable to locate package $2" >&2; exit 100; fi
  shift
  for p in "$@"; do cp "{deb_source}" "./${{p}}_1.0_all.deb"; done
  exit 0
fi
exit 1
"""
    apt = bin_dir / "apt-get"
    apt.write_text(script)
    apt.chmod(apt.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("need_update", [False, True])
def test_fetch_hydrogen_downloads_once_and_caches(tmp_path, monkeypatch, need_update):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    deb = make_deb(tmp_path / "src.deb", {"./usr/share/hydrogen/data/drumkits/K/drumkit.xml": b"<x/>"})
    log = tmp_path / "apt.log"
    _fake_apt(bin_dir, log, deb, need_update)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    tree = debs.fetch_hydrogen(tmp_path / "cache", packages=("pkg-a", "pkg-b"))
    assert tree.kit_dirs == [tree.data_dir / "drumkits" / "K"]
    calls = log.read_text().splitlines()
    assert calls[-1] == "download pkg-a pkg-b"
    assert ("update" in calls) == need_update  # update only when lists were missing
    again = debs.fetch_hydrogen(tmp_path / "cache", packages=("pkg-a", "pkg-b"))
    assert again.seconds == 0.0 and log.read_text().splitlines() == calls  # no apt call the 2nd time


def test_download_without_apt_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get anywhere
    with pytest.raises(debs.DebError, match="apt-get is not available"):
        debs.download_debs(("hydrogen-data",), tmp_path / "debs")
