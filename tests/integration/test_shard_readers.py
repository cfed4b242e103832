"""The shards are WebDataset shards in fact: `webdataset` and Ray Data's `read_webdataset` read the token
and prompt tars the pipeline writes and get the same keys and arrays as the trainer's reader."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from pipelines.stages.shard import ShardConfig, ShardSink
from tria.catalog import Catalogue
from tria.data import ReaderConfig, ShardDataset, ShardSpec

pytestmark = pytest.mark.integration
IDS = {"codec_id": "dac-test", "features_id": "feat-test", "augment_id": "aug-test"}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Two groups written by the pipeline's shard writer: token shards and prompt shards."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    rows = []
    sink = ShardSink(root, ShardConfig(samples_per_shard=5), lambda row, keys, group: rows.append(row), IDS)
    for i in range(8):
        T = 40 + i
        sink.add({"key": f"{i:016x}", "tokens": rng.integers(0, 1024, (9, T)).astype(np.int16),
                  "feats": rng.random((3, 2, T)).astype(np.float16),
                  "meta": {"key": f"{i:016x}", "split": "train", "tier": "isolated", "n_frames": T - 1}})
    sink.close()
    return root, sorted(rows, key=lambda r: r.path)


def _trainer_samples(rows) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    tokens = [r for r in rows if r.kind == "tokens"]
    prompts = {r.group_id: r for r in rows if r.kind == "prompts"}
    specs = [ShardSpec(t.path, t.n_samples, t.sha256, prompts=prompts[t.group_id].path,
                       prompts_sha256=prompts[t.group_id].sha256) for t in tokens]
    out = {}
    for b in ShardDataset(specs, ReaderConfig(batch_size=1, shuffle=False, interleave=1, drop_last=False)):
        n = int(b["lengths"][0]) + 1  # n_frames = T - 1: the unpadded length of a batch of one
        out[b["keys"][0]] = (b["tokens"][0, :, :n].numpy(), b["feats"][0, :, :n].numpy())
    return out


def _variant(key: str, n: int) -> int:  # the trainer's choice of one of the K prompts (epoch 0, seed 0)
    return zlib.crc32(f"0:0:{key}".encode()) % n


def _check(trainer, tokens: dict, feats: dict) -> None:
    assert list(tokens) == list(feats) == list(trainer), "same keys, same order"
    for key, (tok, f) in trainer.items():
        assert np.array_equal(tokens[key].astype(np.int64), tok)
        assert np.array_equal(feats[key][_variant(key, feats[key].shape[0])].astype(np.float32), f)


def test_webdataset_reads_what_the_trainer_reads(written):
    import webdataset as wds

    root, rows = written
    trainer = _trainer_samples(rows)
    tokens, feats = {}, {}
    for kind, out, member in (("tokens", tokens, "tokens.npy"), ("prompts", feats, "feats.npy")):
        urls = [r.path for r in rows if r.kind == kind]
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode():
            out[sample["__key__"]] = sample[member]
    assert len(trainer) == 8
    _check(trainer, tokens, feats)


@pytest.mark.slow
def test_ray_read_webdataset_reads_what_the_trainer_reads(written):
    import ray

    root, rows = written
    trainer = _trainer_samples(rows)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        tokens, feats = {}, {}
        for kind, out, member in (("tokens", tokens, "tokens.npy"), ("prompts", feats, "feats.npy")):
            paths = [r.path for r in rows if r.kind == kind]
            for row in ray.data.read_webdataset(paths, override_num_blocks=1).iter_rows():
                out[row["__key__"]] = np.asarray(row[member])
    finally:
        ray.shutdown()
    _check(trainer, dict(sorted(tokens.items())), dict(sorted(feats.items())))
