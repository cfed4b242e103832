"""Issue 17: the authors' split, `location` in place of downloads, md5 checks, MoisesDB pitched
percussion, MTG-Jamendo's published sha256 list, and the release config's MoisesDB checksum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.sources import get_source, ingest, source_dirs
from pipelines.sources.base import authors_split
from pipelines.sources.moisesdb import is_pitched_percussion
from pipelines.sources.musdb18hq import VALIDATION_TRACKS
from pipelines.stages.download import ChecksumError, download, md5_file

REPO = Path(__file__).resolve().parents[3]
QUIET = {"progress": False, "retries": 0, "backoff_s": 0.01}

# Ten MUSDB-like paths, in an order that is neither sorted nor case-sorted.
SPLIT_FIXTURE = [
    "train/Zeta - Last/mixture.wav", "test/beta - Two/mixture.wav", "train/Alpha - One/mixture.wav",
    "train/gamma - Three/mixture.wav", "test/Delta - Four/mixture.wav", "train/epsilon - Five/mixture.wav",
    "test/Eta - Seven/mixture.wav", "train/theta - Eight/mixture.wav", "test/Iota - Nine/mixture.wav",
    "train/kappa - Ten/mixture.wav",
]
# Derived by hand from the authors' algorithm, not by running the adapter:
#   sorted by lower-cased text: 0 test/beta, 1 test/delta, 2 test/eta, 3 test/iota, 4 train/alpha,
#   5 train/epsilon, 6 train/gamma, 7 train/kappa, 8 train/theta, 9 train/zeta;
#   numpy.random.RandomState(0).permutation(10) = [2 8 4 9 1 6 7 3 0 5];
#   floor(0.8 * 10) = 8 train -> sorted indices 2 8 4 9 1 6 7 3; floor(0.1 * 10) = 1 val -> 0; test -> 5.
EXPECTED_AUTHORS = {
    "test/Eta - Seven/mixture.wav": "train", "train/theta - Eight/mixture.wav": "train",
    "train/Alpha - One/mixture.wav": "train", "train/Zeta - Last/mixture.wav": "train",
    "test/Delta - Four/mixture.wav": "train", "train/gamma - Three/mixture.wav": "train",
    "train/kappa - Ten/mixture.wav": "train", "test/Iota - Nine/mixture.wav": "train",
    "test/beta - Two/mixture.wav": "val", "train/epsilon - Five/mixture.wav": "test",
}


def test_authors_split_pins_the_authors_assignment():
    assert authors_split(SPLIT_FIXTURE) == EXPECTED_AUTHORS
    assert authors_split(list(reversed(SPLIT_FIXTURE))) == EXPECTED_AUTHORS  # input order is irrelevant


@pytest.mark.parametrize("n, counts", [(150, (120, 15, 15)), (240, (192, 24, 24)), (3, (2, 0, 1))])
def test_authors_split_sizes_are_floors(n, counts):
    got = list(authors_split([f"t{i:03d}/mixture.wav" for i in range(n)]).values())
    assert tuple(got.count(s) for s in ("train", "val", "test")) == counts


def _musdb_folder(corpora, root: Path, tracks: list[str], seconds: float = 0.1) -> Path:
    for i, rel in enumerate(tracks):
        folder = root / Path(rel).parent
        folder.mkdir(parents=True, exist_ok=True)
        for stem in ("mixture", "drums"):
            (folder / f"{stem}.wav").write_bytes(corpora.wav_bytes(corpora.tone(seconds, seed=i), subtype="PCM_16"))
    return root


class TestMUSDBSplits:
    def test_authors_mode_end_to_end_with_train_on(self, corpora, tmp_path):
        root = _musdb_folder(corpora, tmp_path / "musdb18hq", SPLIT_FIXTURE)
        source = get_source("musdb18hq", location=root, split_mode="authors", train_on=["train", "test"])
        result = ingest(source, tmp_path / "data")
        own = {t.track: json.loads(t.meta_json)["source_split"] for t in result.consolidated.tracks}
        assert own == {Path(p).parent.name: s for p, s in EXPECTED_AUTHORS.items()}
        # The paper config trains on train + test: the catalogue labels both "train".
        catalogue = {s.track: s.split for s in result.consolidated.stems}
        assert catalogue == {t: "val" if s == "val" else "train" for t, s in own.items()}

    def test_official_mode_yields_train_val_and_test(self, corpora, tmp_path):
        val_track = "Actions - One Minute Smile"
        assert val_track in VALIDATION_TRACKS and len(VALIDATION_TRACKS) == 14
        root = _musdb_folder(corpora, tmp_path / "musdb18hq", [
            f"train/{val_track}/mixture.wav", "train/Someone - Else/mixture.wav", "test/Other - One/mixture.wav"])
        stems = ingest(get_source("musdb18hq", location=root), tmp_path / "data").consolidated.stems
        assert {s.track: s.split for s in stems} == {val_track: "val", "Someone - Else": "train",
                                                     "Other - One": "test"}


class TestLocation:
    def test_a_local_folder_replaces_the_download(self, corpus_server, corpora, tmp_path):
        url = corpus_server.add("musdb18hq.zip", corpora.musdb_zip())
        root = _musdb_folder(corpora, tmp_path / "have", ["train/A - B/mixture.wav"])
        # As a pipeline config entry: the registry's download list plus a user's location.
        source = get_source("musdb18hq", files=[{"url": url, "filename": "musdb18hq.zip"}], location=str(root))
        result = ingest(source, tmp_path / "data", **QUIET)
        assert corpus_server.requests_for("musdb18hq.zip") == []
        raw_dir, _ = source_dirs(source, tmp_path / "data")
        assert not (raw_dir / "downloads").exists()
        assert [s.track for s in result.consolidated.stems] == ["A - B"]

    def test_the_registry_entry_with_a_location_fetches_nothing(self, corpora, tmp_path):
        # conf/sources.yaml points at Zenodo, which this machine cannot reach: nothing may try.
        root = _musdb_folder(corpora, tmp_path / "have", ["test/C - D/mixture.wav"])
        result = ingest(get_source("musdb18hq", location=root), tmp_path / "data", **QUIET)
        assert [s.split for s in result.consolidated.stems] == ["test"]

    def test_a_local_archive_is_checked_against_the_published_md5(self, corpora, tmp_path):
        data = corpora.musdb_zip()
        archive = tmp_path / "musdb18hq.zip"
        archive.write_bytes(data)
        good = {"url": "http://127.0.0.1:9/never", "filename": "musdb18hq.zip", "md5": md5_file(archive)}
        ok = ingest(get_source("musdb18hq", files=[good], location=archive), tmp_path / "ok", **QUIET)
        assert len(ok.consolidated.stems) == 3 and [r.name for r in ok.raw_files] == ["musdb18hq.zip"]
        bad = {**good, "md5": "0" * 32}
        with pytest.raises(ChecksumError, match="md5 does not match the published"):
            ingest(get_source("musdb18hq", files=[bad], location=archive), tmp_path / "bad", **QUIET)


class TestMd5Download:
    def test_md5_is_checked_and_remembered(self, corpus_server, tmp_path):
        import hashlib

        data = b"zenodo publishes md5 only" * 1000
        url = corpus_server.add("f.bin", data)
        md5 = hashlib.md5(data).hexdigest()
        with pytest.raises(ChecksumError, match="md5 mismatch"):
            download(url, tmp_path / "bad.bin", md5="f" * 32, config=_config())
        assert not (tmp_path / "bad.bin").exists()
        first = download(url, tmp_path / "f.bin", md5=md5, config=_config())
        assert first.fetched_bytes == len(data)
        assert (tmp_path / "f.bin.sha256").read_text().split()[2] == md5
        corpus_server.reset_counts()
        again = download(url, tmp_path / "f.bin", md5=md5, config=_config())
        assert again.skipped and corpus_server.requests_for("f.bin") == []
        # A file that changed on disk (another size than recorded) fails the md5 again.
        (tmp_path / "f.bin").write_bytes(data[:-1])
        with pytest.raises(ChecksumError, match="md5 mismatch"):
            download(url, tmp_path / "f.bin", md5=md5, config=_config())


def _config():
    from pipelines.stages.download import DownloadConfig

    return DownloadConfig(**QUIET)


class TestMoisesPitchedPercussion:
    UUID = "0a1b2c3d-0000-4000-8000-0000000000aa"

    def _track(self, corpora, root: Path, uuid: str, parts: dict[str, list[tuple[str, str]]]) -> None:
        """parts: stemName -> [(file id, trackType)]; data.json as the real one (stems[].tracks[])."""
        track = root / "moisesdb" / "moisesdb_v0.1" / uuid
        stems = []
        for k, (stem, files) in enumerate(parts.items()):
            (track / stem).mkdir(parents=True)
            for j, (fid, kind) in enumerate(files):
                (track / stem / f"{fid}.wav").write_bytes(corpora.wav_bytes(corpora.tone(0.5, seed=10 * k + j, amp=0.2)))
            stems.append({"stemName": stem, "tracks": [{"id": fid, "extension": "wav", "trackType": kind,
                                                        "has_bleed": False} for fid, kind in files]})
        (track / "data.json").write_text(json.dumps({"artist": "A", "song": "S", "genre": "pop", "stems": stems}))

    def test_pitched_percussion_is_left_out_unless_asked(self, corpora, tmp_path):
        root = tmp_path / "moises"
        self._track(corpora, root, self.UUID, {
            "drums": [("d1", "kick drum")],
            "percussion": [("p1", "a-tonal percussion (claps, shakers, congas, cowbell etc)"),
                           ("p2", "pitched percussion (mallets, glockenspiel, ...)")]})
        only = "0a1b2c3d-0000-4000-8000-0000000000bb"
        self._track(corpora, root, only, {"percussion": [("p3", "pitched percussion (mallets, glockenspiel, ...)")],
                                          "bass": [("b1", "bass guitar")]})
        default = ingest(get_source("moisesdb", location=root), tmp_path / "a").consolidated
        [track] = default.tracks
        meta = json.loads(track.meta_json)
        assert meta["drum_parts"] == ["drums/d1.wav", "percussion/p1.wav"]
        assert meta["pitched_percussion_left_out"] == ["percussion/p2.wav"]
        [reject] = default.rejects
        assert (reject.item, reject.reason) == (only, "only_pitched_percussion")

        # Same data folder: the stem summed without the glockenspiel is redone, not reused.
        before = Path(next(s.path for s in default.stems)).read_bytes()
        kept = ingest(get_source("moisesdb", location=root, pitched_percussion=True), tmp_path / "a").consolidated
        assert Path(next(s.path for s in kept.stems if s.track == self.UUID)).read_bytes() != before
        parts = {t.track: json.loads(t.meta_json)["drum_parts"] for t in kept.tracks}
        assert parts == {self.UUID: ["drums/d1.wav", "percussion/p1.wav", "percussion/p2.wav"],
                         only: ["percussion/p3.wav"]}
        assert not kept.rejects

    @pytest.mark.parametrize("kind, pitched", [("pitched percussion (mallets, glockenspiel, ...)", True),
                                               ("pitched_percussion_(mallets,_glockenspiel,_...)", True),
                                               ("a-tonal percussion (claps, shakers, congas, cowbell etc)", False),
                                               ("kick drum", False)])
    def test_track_type_rule(self, kind, pitched):
        assert is_pitched_percussion(kind) is pitched


class TestReleaseConfig:
    def _moises_entry(self) -> dict:
        cfg = yaml.safe_load((REPO / "conf" / "pipeline" / "release.yaml").read_text())
        [entry] = [e for e in cfg["sources"] if e["name"] == "moisesdb"]
        return {k: v for k, v in entry.items() if k != "name"}

    def test_release_moisesdb_checks_the_archive_its_digest_belongs_to(self, corpora, tmp_path):
        text = (REPO / "conf" / "pipeline" / "release.yaml").read_text()
        assert "moisesdb.tar.gz" not in text and "moisesdb.zip" in text
        archive = tmp_path / "moisesdb.zip"  # our fixture, so not the published bytes
        archive.write_bytes(corpora.make_zip(corpora.moises_members()))
        with pytest.raises(ChecksumError, match="published"):
            ingest(get_source("moisesdb", **self._moises_entry(), location=archive), tmp_path / "a")

    def test_a_repacked_archive_is_used_unchecked_with_a_note(self, corpora, tmp_path, capsys):
        archive = tmp_path / "moisesdb.tar.gz"
        archive.write_bytes(corpora.make_tar(corpora.moises_members(), mode="w:gz"))
        result = ingest(get_source("moisesdb", **self._moises_entry(), location=archive), tmp_path / "a")
        assert len(result.consolidated.stems) == 2
        assert "used unchecked" in capsys.readouterr().out
        # The release config splits like the authors and trains on every MoisesDB split.
        assert {s.split for s in result.consolidated.stems} == {"train"}


def test_mtg_jamendo_tars_carry_the_published_sha256():
    source = get_source("mtg_jamendo", parts=[0, 99])
    digests = {f.filename: f.sha256 for f in source.files}
    # From data/download/raw_30s_audio_sha256_tars.txt in github.com/MTG/mtg-jamendo-dataset.
    assert digests["raw_30s_audio-00.tar"] == "c569f4b7264995c06de93eb6c20138d9355274508dde37085ed992fc990d930b"
    assert len(digests["raw_30s_audio-99.tar"]) == 64
