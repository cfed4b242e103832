"""Pipeline stages as plain functions on hand-built batches (no Ray)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from pipelines.rows import ShardRow
from pipelines.stages.excerpt import FilterConfig, choose_excerpts, filter_batch, rows_from_batch
from pipelines.stages.prompts import PromptConfig, prompts_batch, variant_seeds
from pipelines.stages.shard import ShardConfig, ShardSink, write_tar
from pipelines.stages.tokenize import CodecConfig, Tokenizer
from synth_audio import SR, click_track
from tria.features import RhythmFeatureConfig


def _wav(path, y, sr=SR, subtype=None):
    sf.write(path, y, sr, subtype=subtype)
    return str(path)


def _loop(seconds, seed=0):
    rng = np.random.default_rng(seed)
    times = np.arange(0, seconds, 0.25) + rng.uniform(0, 0.01)
    return click_track(times, seconds, freq=400.0, decay_s=0.05)


class TestFilter:
    def test_long_stem_gives_one_excerpt_per_loud_region(self, tmp_path):
        y = np.concatenate([_loop(20.0), np.zeros(20 * SR, np.float32), _loop(20.0, seed=1)])
        p = _wav(tmp_path / "long.wav", y)
        kept, reason, _ = choose_excerpts(p, "stem1", FilterConfig(region_s=20.0))
        assert reason == "" and len(kept) == 2  # the silent middle region is skipped
        assert kept[0]["offset_s"] < 14.0 and kept[1]["offset_s"] >= 40.0
        assert all(e["loudness_db"] >= -24.0 and e["duration_s"] == 6.0 for e in kept)

    def test_deterministic_offsets(self, tmp_path):
        p = _wav(tmp_path / "a.wav", _loop(30.0))
        a = choose_excerpts(p, "s", FilterConfig())[0]
        b = choose_excerpts(p, "s", FilterConfig())[0]
        c = choose_excerpts(p, "s", FilterConfig(seed=1))[0]
        assert a == b and a != c

    def test_short_stem_offset_zero_and_padded_duration(self, tmp_path):
        p = _wav(tmp_path / "short.wav", _loop(4.0))
        kept, reason, _ = choose_excerpts(p, "s", FilterConfig())
        assert reason == "" and kept[0]["offset_s"] == 0.0 and abs(kept[0]["duration_s"] - 4.0) < 1e-6

    @pytest.mark.parametrize("make,reason", [
        (lambda d: _wav(d / "silent.wav", np.zeros(3 * SR, np.float32)), "silent"),
        (lambda d: _wav(d / "quiet.wav", _loop(8.0) * 0.03), "below_loudness_cutoff"),
        (lambda d: _wav(d / "lofi.wav", _loop(3.0)[:24000], sr=8000), "sample_rate_too_low"),
        (lambda d: _wav(d / "tiny.wav", _loop(0.5)), "too_short"),
        (lambda d: _wav(d / "clip.wav", np.sign(_loop(8.0) + 1e-3).astype(np.float32)), "clipped"),
        (lambda d: _wav(d / "nan.wav", np.where(np.arange(3 * SR) == 5, np.nan, _loop(3.0)).astype(np.float32),
                        subtype="FLOAT"), "non_finite"),
        (lambda d: (d / "junk.wav").write_bytes(b"RIFF0000WAVEjunk") and str(d / "junk.wav"), "unreadable"),
    ])
    def test_bad_stems_get_a_reason(self, tmp_path, make, reason):
        p = make(tmp_path)
        kept, got, detail = choose_excerpts(p, "s", FilterConfig())
        assert kept == [] and got == reason and detail

    def test_batch_function_and_rows(self, tmp_path):
        good = _wav(tmp_path / "g.wav", _loop(8.0))
        bad = _wav(tmp_path / "s.wav", np.zeros(2 * SR, np.float32))
        batch = {"stem_id": np.array(["a", "b"]), "source": np.array(["src", "src"]),
                 "track": np.array(["t1", "t2"]), "stem": np.array(["drums", "drums"]),
                 "path": np.array([good, bad]), "split": np.array(["train", "val"]),
                 "tier": np.array(["isolated", "isolated"])}
        out = filter_batch(batch, FilterConfig())
        assert list(out["kind"]) == ["excerpt", "reject"]
        excerpts, rejects = rows_from_batch(out, run_id="r1")
        assert len(excerpts) == 1 and excerpts[0].id == out["key"][0] and excerpts[0].stem_id != ""
        assert rejects[0].reason == "silent" and rejects[0].stage == "filter" and rejects[0].item == "b"


class TestPromptsAndTokenize:
    def test_feats_shapes_grid_and_determinism(self, tmp_path):
        p = _wav(tmp_path / "x.wav", _loop(8.0))
        batch = {"key": np.array(["k1", "k2"]), "path": np.array([p, str(tmp_path / "gone.wav")]),
                 "offset_s": np.array([1.0, 0.0]), "duration_s": np.array([6.0, 6.0]),
                 "split": np.array(["train", "train"])}
        cfg = PromptConfig(n_variants=3, features=RhythmFeatureConfig.release())
        out = prompts_batch(batch, cfg)
        assert out["feats"].shape == (2, 3, 2, 516) and out["feats"].dtype == np.float16
        assert list(out["ok"]) == [True, False] and out["error"][1] == "missing"
        f = out["feats"][0].astype(np.float32) * 4
        assert np.allclose(f, f.round()) and f.max() > 0
        assert not np.array_equal(out["feats"][0, 0], out["feats"][0, 1])  # variants differ
        assert np.array_equal(prompts_batch(batch, cfg)["feats"], out["feats"])
        assert out["n_frames"][0] == 516
        assert variant_seeds("k1", 3) == variant_seeds("k1", 3) != variant_seeds("k2", 3)

    def test_padded_excerpt_has_fewer_valid_frames(self, tmp_path):
        p = _wav(tmp_path / "short.wav", _loop(3.0))
        batch = {"key": np.array(["k"]), "path": np.array([p]), "offset_s": np.array([0.0]),
                 "duration_s": np.array([3.0])}
        out = prompts_batch(batch, PromptConfig(n_variants=1))
        assert out["n_frames"][0] == (516 * 3 * SR) // (6 * SR) == 258
        assert np.all(out["audio"][0, 3 * SR:] == 0)

    def test_tokenizer_actor(self):
        tok = Tokenizer(CodecConfig(size="tiny"), flac_splits=("val",))
        audio = np.stack([_loop(6.0), _loop(6.0, seed=3)])
        out = tok({"audio": audio, "split": np.array(["train", "val"]), "key": np.array(["a", "b"])})
        assert "audio" not in out and out["tokens"].shape == (2, 9, 516) and out["tokens"].dtype == np.int16
        assert out["flac"][0] == b"" and sf.read(io.BytesIO(out["flac"][1]))[0].shape == (6 * SR,)


class TestShards:
    def _sample(self, key, split="train", tier="isolated"):
        return {"key": key, "tokens": np.full((9, 516), 7, np.int16), "feats": np.zeros((2, 2, 516), np.float16),
                "meta": {"key": key, "split": split, "tier": tier}}

    def test_write_tar_members_and_atomic_name(self, tmp_path):
        path = tmp_path / "s" / "shard-000000.tar"
        n_bytes, sha = write_tar(path, [self._sample("aa"), self._sample("bb")])
        assert path.exists() and not path.with_name(path.name + ".tmp").exists() and n_bytes == path.stat().st_size
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert names == ["aa.tokens.npy", "aa.feats.npy", "aa.json", "bb.tokens.npy", "bb.feats.npy", "bb.json"]
            tokens = np.load(io.BytesIO(tar.extractfile("bb.tokens.npy").read()))
            assert tokens.dtype == np.int16 and tokens.shape == (9, 516)
            assert json.loads(tar.extractfile("aa.json").read())["key"] == "aa"
        # Same samples, same bytes (mtime 0, fixed member order).
        assert write_tar(tmp_path / "t" / "shard-000000.tar", [self._sample("aa"), self._sample("bb")])[1] == sha

    def test_sink_groups_rolls_and_registers(self, tmp_path):
        registered: list[tuple[ShardRow, list[str]]] = []
        sink = ShardSink(tmp_path, ShardConfig(samples_per_shard=2), lambda row, keys: registered.append((row, keys)),
                         ids={"codec_id": "c", "features_id": "f", "augment_id": "a"})
        (tmp_path / "train" / "isolated").mkdir(parents=True)
        (tmp_path / "train" / "isolated" / "shard-000004.tar.tmp").write_bytes(b"partial")
        (tmp_path / "train" / "isolated" / "shard-000003.tar").write_bytes(b"")  # an earlier run's shard
        assert sink.remove_partial() == 1
        for i, split in enumerate(["train", "val", "train", "train", "val"]):
            sink.add(self._sample(f"k{i}", split=split))
        rows = sink.close()
        assert sorted((r.split, r.n_samples) for r in rows) == [("train", 1), ("train", 2), ("val", 2)]
        assert rows[0].path.endswith("train/isolated/shard-000004.tar")  # continues after existing index 3
        assert sorted(k for _, keys in registered for k in keys) == [f"k{i}" for i in range(5)]
        assert all(r.codec_id == "c" and r.features_id == "f" for r in rows)
