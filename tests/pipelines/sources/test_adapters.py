"""Each adapter on a small archive in its corpus's real layout, fetched from a local HTTP server."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from pipelines.sources import get_source, ingest, source_dirs
from pipelines.sources.base import ManualDownloadRequired, RemoteFile, hash_split, stem_path
from pipelines.sources.fsl10k import tag_reason
from pipelines.sources.moisesdb import is_drum_folder, sum_stems
from pipelines.stages.download import ChecksumError

QUIET = {"progress": False, "retries": 1, "backoff_s": 0.01}


def _remote(server, name: str, data: bytes, sha: str | None = None, **kw) -> dict:
    return {"url": server.add(name, data), "filename": name, "size": len(data), "sha256": sha, **kw}


class TestMUSDB:
    def test_official_split_drums_and_missing_stem(self, corpus_server, corpora, tmp_path):
        data = corpora.musdb_zip()
        source = get_source("musdb18hq", files=[_remote(corpus_server, "musdb18hq.zip", data,
                                                        corpora.sha256(data))])
        result = ingest(source, tmp_path, **QUIET)
        stems = {s.track: s for s in result.consolidated.stems}
        assert sorted(stems) == ["Artist A - Song One", "Artist B - Song Two", "Artist C - Song Three"]
        assert {s.split for t, s in stems.items()} == {"train", "test"}
        assert stems["Artist C - Song Three"].split == "test"
        one = stems["Artist A - Song One"]
        assert (one.stem, one.role, one.tier, one.sample_rate, one.n_channels) == ("drums", "drums", "isolated",
                                                                                   44100, 2)
        assert one.n_samples == 44100 and one.raw_ids == (source.raw_id("downloads/musdb18hq.zip"),)
        # The consolidated file is the archive's drums.wav, in the common layout.
        raw_dir, out_dir = source_dirs(source, tmp_path)
        original = raw_dir / "extracted" / "musdb18hq" / "train" / "Artist A - Song One" / "drums.wav"
        assert one.path == str(stem_path(out_dir, "train", "Artist A - Song One", "drums"))
        assert open(one.path, "rb").read() == original.read_bytes()
        [reject] = result.consolidated.rejects
        assert (reject.what, reject.item, reject.reason) == ("track", "test/Artist D - No Drums", "missing_stem")

    def test_mixture_and_hash_split(self, corpus_server, corpora, tmp_path):
        data = corpora.musdb_zip()
        source = get_source("musdb18hq", files=[_remote(corpus_server, "musdb18hq.zip", data)],
                            stems=["drums", "mixture"], split_mode="hash")
        stems = ingest(source, tmp_path, **QUIET).consolidated.stems
        assert sorted((s.stem, s.role, s.tier) for s in stems if s.track == "Artist A - Song One") == [
            ("drums", "drums", "isolated"), ("mix", "mix", "separated")]
        for s in stems:
            assert s.split == hash_split(f"musdb18hq|{s.track}")

    def test_bad_options(self):
        with pytest.raises(ValueError, match="stems must be"):
            get_source("musdb18hq", stems=["vocals"])
        with pytest.raises(ValueError, match="split_mode"):
            get_source("musdb18hq", split_mode="random")


class TestMoisesDB:
    def _archive(self, corpora, tmp_path):
        path = tmp_path / "downloads" / "moisesdb.zip"
        path.parent.mkdir()
        path.write_bytes(corpora.make_zip(corpora.moises_members()))
        return path

    def test_drum_stem_is_the_padded_sum_of_drum_and_percussion_parts(self, corpora, tmp_path):
        archive = self._archive(corpora, tmp_path)
        source = get_source("moisesdb", location=archive, sha256=corpora.sha256(archive.read_bytes()))
        result = ingest(source, tmp_path / "data")
        stems = {s.track: s for s in result.consolidated.stems}
        uuid = "0a1b2c3d-0000-4000-8000-000000000001"
        folders = corpora.MOISES_TRACKS[uuid]
        # Expected: every drums/ and percussion/ part, zero-padded to the longest file of the
        # track (the 1.5 s bass), summed; peak 1.4 > 1 here, so divided by the peak.
        n = int(1.5 * corpora.SR)
        expected = np.zeros((2, n))
        for folder in ("drums", "percussion"):
            for seconds, seed, amp in folders[folder]:
                part = corpora.tone(seconds, seed=seed, amp=amp).astype(np.float64)
                expected[:, : part.shape[1]] += part
        peak = np.abs(expected).max()
        assert peak > 1.0
        expected /= peak
        got, sr = sf.read(stems[uuid].path, dtype="float64", always_2d=True)
        assert sr == corpora.SR and got.shape == (n, 2)
        np.testing.assert_allclose(got.T, expected, atol=2e-7)  # 24-bit PCM
        assert stems[uuid].n_samples == n and stems[uuid].tier == "isolated"
        assert stems[uuid].raw_ids == (source.raw_id("moisesdb.zip"),)

        # A quiet track is not scaled: the stem equals its single drum part.
        quiet = "0a1b2c3d-0000-4000-8000-000000000002"
        got, _ = sf.read(stems[quiet].path, dtype="float64", always_2d=True)
        np.testing.assert_allclose(got.T, corpora.tone(1.0, seed=5, amp=0.2), atol=2e-7)

        [reject] = result.consolidated.rejects
        assert (reject.item, reject.reason) == ("0a1b2c3d-0000-4000-8000-000000000003", "no_drums")
        track = next(t for t in result.consolidated.tracks if t.track == uuid)
        assert track.title == "Artist 0 - Song 0"
        assert json.loads(track.meta_json)["drum_parts"] == [
            "drums/00000001-part0.wav", "drums/00000002-part1.wav", "percussion/00000003-part0.wav"]

    def test_unpacked_folder_gives_per_file_lineage(self, corpora, tmp_path):
        root = tmp_path / "moisesdb_folder"
        for name, data in corpora.moises_members().items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        source = get_source("moisesdb", location=root)
        result = ingest(source, tmp_path / "data")
        assert len(result.raw_files) == len(corpora.moises_members())
        stem = next(s for s in result.consolidated.stems if s.track.endswith("0001"))
        assert len(stem.raw_ids) == 3  # two drum parts and one percussion part
        assert set(stem.raw_ids) <= {r.id for r in result.raw_files}

    def test_wrong_archive_checksum(self, corpora, tmp_path):
        archive = self._archive(corpora, tmp_path)
        with pytest.raises(ChecksumError, match="does not match"):
            ingest(get_source("moisesdb", location=archive), tmp_path / "data")  # published sha256

    def test_without_location_asks_for_the_manual_download(self, tmp_path):
        with pytest.raises(ManualDownloadRequired, match="music.ai/research"):
            ingest(get_source("moisesdb"), tmp_path)

    def test_sum_stems_rejects_mixed_rates(self, corpora, tmp_path):
        a, b = tmp_path / "a.wav", tmp_path / "b.wav"
        a.write_bytes(corpora.wav_bytes(corpora.tone(0.1)))
        b.write_bytes(corpora.wav_bytes(corpora.tone(0.1, sr=22050), sr=22050))
        with pytest.raises(ValueError, match="sample rates differ"):
            sum_stems([a, b], 10_000)

    @pytest.mark.parametrize("name, drums", [("drums", True), ("Percussion", True), ("drum_machine", True),
                                             ("bass", False), ("other_keys", False)])
    def test_drum_folder_rule(self, name, drums):
        assert is_drum_folder(name) is drums


class TestFSL10K:
    def test_filter_rule_keeps_only_long_drum_loops(self, corpus_server, corpora, tmp_path):
        data = corpora.fsl_zip()
        source = get_source("fsl10k", files=[_remote(corpus_server, "FSL10K.zip", data, corpora.sha256(data))])
        result = ingest(source, tmp_path, **QUIET)
        stems = {s.track: s for s in result.consolidated.stems}
        assert sorted(stems) == ["1001", "1006"]
        assert (stems["1001"].tier, stems["1001"].licence, stems["1001"].duration_s) == ("isolated", "CC-BY-3.0", 5.0)
        track = next(t for t in result.consolidated.tracks if t.track == "1006")
        assert json.loads(track.meta_json)["file"] == "audio/wav/1006_505.aiff.wav"
        reasons = {r.item: r.reason for r in result.consolidated.rejects}
        assert reasons == {"audio/wav/1002_501.wav.wav": "too_short", "audio/wav/1003_502.aiff.wav": "low_sample_rate",
                           "audio/wav/1004_503.wav.wav": "excluded_tag", "audio/wav/1005_504.wav.wav": "no_drum_tag",
                           "1007": "missing_file", "audio/wav/9999_1.wav.wav": "not_selected"}

    @pytest.mark.parametrize("tags, reason", [(["drum"], None), (["Drums", "loop"], None),
                                              (["drum", "bassline"], "excluded_tag"), (["beat"], "no_drum_tag"),
                                              (["drum", "Vocals"], "excluded_tag"), ([], "no_drum_tag")])
    def test_tag_rule(self, tags, reason):
        assert tag_reason(tags) == reason


class TestMTGJamendo:
    def test_mixes_are_separated_tier_and_unlisted_songs_rejected(self, corpus_server, corpora, tmp_path):
        tsv, tar = corpora.jamendo_files()
        source = get_source("mtg_jamendo", files=[
            _remote(corpus_server, "raw_30s_cleantags.tsv", tsv, extract=False),
            _remote(corpus_server, "raw_30s_audio-00.tar", tar)], parts=[])
        result = ingest(source, tmp_path, **QUIET)
        stems = {s.track: s for s in result.consolidated.stems}
        assert sorted(stems) == ["track_0000100", "track_0000200"]
        mix = stems["track_0000100"]
        assert (mix.stem, mix.role, mix.tier) == ("mix", "mix", "separated")
        assert mix.path.endswith("mix.mp3") and abs(mix.duration_s - 1.5) < 0.05
        [reject] = result.consolidated.rejects
        assert (reject.item, reject.reason) == ("00/300.mp3", "not_in_metadata")

    def test_parts_become_downloads(self):
        source = get_source("mtg_jamendo", files=[], parts=[0, 7])
        assert [f.filename for f in source.files] == ["raw_30s_audio-00.tar", "raw_30s_audio-07.tar"]
        assert source.files[1].url.endswith("/raw_30s_audio-07.tar")
        with pytest.raises(ValueError, match="0..99"):
            get_source("mtg_jamendo", parts=[100])


class TestAugmentationSources:
    def test_rir_and_noise_split_the_openslr_archive(self, corpus_server, corpora, tmp_path):
        data = corpora.rirs_noises_zip()
        remote = _remote(corpus_server, "rirs_noises.zip", data, corpora.sha256(data))
        rir = ingest(get_source("rir", files=[remote]), tmp_path, **QUIET).consolidated
        noise = ingest(get_source("noise", files=[remote]), tmp_path, **QUIET).consolidated
        assert sorted(s.track.rsplit("/", 1)[-1] for s in rir.stems) == [
            "Room001-00001", "Room002-00001", "air_type1_air_binaural_booth_0_1_1"]
        assert sorted(s.track.rsplit("/", 1)[-1] for s in noise.stems) == [
            "RVB2014_type1_noise_largeroom1_1", "noise-free-sound-0001"]
        assert {(s.role, s.sample_rate, s.n_channels) for s in rir.stems} == {("rir", 16000, 1)}
        assert {s.role for s in noise.stems} == {"noise"}


class TestLocalFolder:
    def test_every_readable_audio_file_is_a_stem(self, corpora, tmp_path):
        folder = corpora.local_folder(tmp_path / "mine")
        source = get_source("local_folder", location=folder, tier="synthetic", licence="CC0-1.0", split="val")
        result = ingest(source, tmp_path / "data")
        assert sorted((s.track, s.tier, s.split, s.licence) for s in result.consolidated.stems) == [
            ("a", "synthetic", "val", "CC0-1.0"), ("sub/b", "synthetic", "val", "CC0-1.0")]
        [reject] = result.consolidated.rejects
        assert (reject.item, reject.reason) == ("broken.wav", "unreadable")
        # Every file of the folder is a raw file (lineage), including the ones that were not audio.
        assert sorted(r.name for r in result.raw_files) == ["a.wav", "broken.wav", "notes.txt", "sub/b.flac"]

    def test_bad_settings(self, tmp_path):
        with pytest.raises(ValueError, match="tier must be one of"):
            get_source("local_folder", location=tmp_path, tier="great")
        with pytest.raises(ValueError, match="split must be one of"):
            get_source("local_folder", location=tmp_path, split="holdout")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            get_source("local_folder", location=tmp_path / "nope").fetch(tmp_path / "raw")


def test_remote_file_from_dict_defaults_the_filename():
    f = RemoteFile.from_dict({"url": "https://example.org/a/b/data.zip", "sha256": "ABC"})
    assert (f.filename, f.sha256, f.size, f.extract) == ("data.zip", "abc", None, True)


@pytest.mark.parametrize("name", ["musdb18hq", "moisesdb", "fsl10k", "mtg_jamendo", "rir", "noise", "local_folder"])
def test_misspelt_option_is_an_error(name):
    with pytest.raises(ValueError, match=rf"{name}: unknown options \['min_duraton'\]"):
        get_source(name, min_duraton=3)
