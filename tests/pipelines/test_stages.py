"""Pipeline stages as plain functions on hand-built batches (no Ray)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines.stages.excerpt import FilterConfig, choose_excerpts, filter_batch, rows_from_batch
from pipelines.stages.groups import GroupTokenizer, group_prompts, write_group
from pipelines.stages.prompts import PromptConfig, prompts_batch, variant_seeds
from pipelines.stages.shard import (ShardConfig, ShardSink, field_samples, remove_partial, remove_unregistered,
                                   write_shard)
from pipelines.stages.tokenize import CodecConfig, Tokenizer
from synth_audio import SR, click_track
from tria.features import RhythmFeatureConfig
from tria.rows import group_id


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
    IDS = {"codec_id": "c", "features_id": "f", "augment_id": "a"}

    def _sample(self, key, split="train", tier="isolated"):
        return {"key": key, "tokens": np.full((9, 516), 7, np.int16), "feats": np.zeros((2, 2, 516), np.float16),
                "meta": {"key": key, "split": split, "tier": tier, "n_frames": 500}}

    def test_write_shard_members_index_and_atomic_name(self, tmp_path):
        path = str(tmp_path / "s" / "shard-000000.tar")
        samples = field_samples("tokens", [self._sample("aa"), self._sample("bb")], self.IDS)
        samples[1]["tokens"] = np.arange(9 * 516, dtype=np.int16).reshape(9, 516)
        n_bytes, sha = write_shard(path, "tokens", samples)
        assert Path(path).exists() and not Path(path + ".tmp").exists() and n_bytes == Path(path).stat().st_size
        with tarfile.open(path) as tar:
            assert tar.getnames() == ["aa.tokens.npy", "aa.json", "bb.tokens.npy", "bb.json"]
            tokens = np.load(io.BytesIO(tar.extractfile("bb.tokens.npy").read()))
            meta = json.loads(tar.extractfile("aa.json").read())
        assert tokens.dtype == np.int16 and tokens.shape == (9, 516)
        assert meta["key"] == "aa" and meta["codec_id"] == "c" and "features_id" not in meta
        index = json.loads(Path(path + ".idx").read_text())
        assert index["keys"] == ["aa", "bb"] and index["tar_bytes"] == n_bytes and index["sha256"] == sha
        offset, dtype, shape = index["arrays"]["tokens.npy"][1]
        raw = Path(path).read_bytes()[offset: offset + 9 * 516 * 2]
        assert np.array_equal(np.frombuffer(raw, dtype=dtype).reshape(shape), tokens)  # the index points at the array
        assert index["meta"] == {"n_frames": [500, 500], "tier": ["isolated", "isolated"]}
        # Same samples, same bytes (mtime 0, fixed member order).
        assert write_shard(str(tmp_path / "t" / "shard-000000.tar"), "tokens", samples)[1] == sha

    def test_sink_writes_aligned_field_sets_per_group(self, tmp_path):
        registered = []
        sink = ShardSink(tmp_path, ShardConfig(samples_per_shard=2), lambda *a: registered.append(a), ids=self.IDS)
        for i, split in enumerate(["train", "val", "train", "train", "val"]):
            sink.add(self._sample(f"k{i}", split=split))
        rows = sink.close()
        assert sorted((r.kind, r.split, r.n_samples) for r in rows) == [
            ("prompts", "train", 1), ("prompts", "train", 2), ("prompts", "val", 2),
            ("tokens", "train", 1), ("tokens", "train", 2), ("tokens", "val", 2)]
        tok = [r for r in rows if r.kind == "tokens"]
        assert {r.path.split("/isolated/")[1] for r in tok} == {"tokens-c/shard-000000.tar", "tokens-c/shard-000001.tar"}
        assert all(r.codec_id == "c" and not r.features_id for r in tok)
        assert all(r.features_id == "f" and r.augment_id == "a" and "/prompts-f-a/" in r.path
                   for r in rows if r.kind == "prompts")
        by_group = {}
        for row, keys, group in registered:
            assert row.group_id == group.id
            by_group.setdefault(group.id, []).append(keys)
        assert all(len(v) == 2 and v[0] == v[1] for v in by_group.values()), "both field sets hold the same keys"

    def test_partial_and_unregistered_files_are_removed(self, tmp_path):
        folder = tmp_path / "train" / "isolated" / "tokens-c"
        folder.mkdir(parents=True)
        for name in ("shard-000004.tar.tmp", "shard-000003.tar", "shard-000003.tar.idx", "shard-000001.tar",
                     "shard-000001.tar.idx", "notes.txt"):
            (folder / name).write_bytes(b"x")
        assert remove_partial(str(tmp_path)) == 1
        assert remove_unregistered(str(tmp_path), {str(folder / "shard-000001.tar")}) == 1
        assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "shard-000001.tar", "shard-000001.tar.idx"]


class TestGroups:
    """The group stages without Ray: prompts-only groups need no codec, new groups get both field sets."""

    def _group(self, tmp_path, want_tokens, want_prompts, n=3):
        excerpts = []
        for i in range(n):
            path = _wav(tmp_path / f"l{i}.wav", _loop(7.0, seed=i))
            excerpts.append({"key": f"k{i}", "source": "s", "track": f"t{i}", "stem": "drums", "path": path,
                             "split": "train", "tier": "isolated", "offset_s": 0.5, "duration_s": 6.0,
                             "loudness_db": -20.0})
        g = {"group_id": group_id("train", "isolated", 0), "split": "train", "tier": "isolated", "idx": 0,
             "want_tokens": want_tokens, "want_prompts": want_prompts, "excerpts": excerpts}
        return {k: np.asarray([v], dtype=object) for k, v in g.items()}

    def _records(self, batch):
        return [json.loads(r) for r in batch["record"]]

    def test_new_group_gets_both_field_sets_then_prompts_only(self, tmp_path):
        ids = {**TestShards.IDS, "codec_id": "dac-random-tiny-s0"}
        prompts = PromptConfig(n_variants=2, features=RhythmFeatureConfig.release())
        batch = group_prompts(self._group(tmp_path, True, True), prompts, chunk=2)
        batch = GroupTokenizer(CodecConfig(size="tiny"), (), 6.0, 2)(batch)
        recs = self._records(write_group(batch, str(tmp_path / "shards"), ids, "r"))
        shards = [r for r in recs if "shard" in r]
        assert [r["shard"]["kind"] for r in shards] == ["tokens", "prompts"] and recs[-1] == {"done": batch["group_id"][0]}
        assert all(r["keys"] == ["k0", "k1", "k2"] for r in shards)
        # a second features config for the same group: only prompts, no codec involved
        ids2 = {**ids, "features_id": "f2"}
        batch = group_prompts(self._group(tmp_path, False, True), prompts, chunk=2)
        assert "tokens" not in batch
        recs = self._records(write_group(batch, str(tmp_path / "shards"), ids2, "r"))
        assert [r["shard"]["kind"] for r in recs if "shard" in r] == ["prompts"]
        assert (tmp_path / "shards/train/isolated/prompts-f2-a/shard-000000.tar").exists()

    def test_existing_group_with_a_failing_excerpt_keeps_lacking_the_field_set(self, tmp_path):
        batch = self._group(tmp_path, False, True)
        Path(batch["excerpts"][0][1]["path"]).write_bytes(b"not audio")
        batch = group_prompts(batch, PromptConfig(n_variants=1, features=RhythmFeatureConfig.release()), chunk=4)
        recs = self._records(write_group(batch, str(tmp_path / "shards"), TestShards.IDS, "r"))
        assert not [r for r in recs if "shard" in r], "a field set missing a key would break the zip"
        assert [r["reject"]["item"] for r in recs if "reject" in r] == ["k1"]
