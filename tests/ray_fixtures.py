"""Helpers of the Ray cluster tests: a pipeline config on a fixture corpus, and the samples of its shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import yaml


def pipeline_yaml(root: Path, audio: Path, mix: bool = False, per_shard: int = 4, batch: int = 1,
                  ray: dict | None = None) -> Path:
    """``root/pipeline.yaml`` over the loops (and the mix) of ``audio``: tiny random codec, release features."""
    sources = [{"name": "local_folder", "location": str(audio), "include": ["loop_*"], "tier": "isolated",
                "licence": "test"}]
    if mix:
        sources.append({"name": "local_folder", "location": str(audio), "include": ["song_*"], "role": "mix",
                        "tier": "separated", "licence": "test", "split": "train"})
    cfg = {
        "name": "cluster-test",
        "sources": sources,
        "filter": {"region_s": 7.0, "loudness_cutoff_db": -50.0},  # random-init Demucs output is quiet
        "prompts": {"n_variants": 2, "augment": {"preset": "release"}, "features": {"preset": "release"}},
        "codec": {"weights": "random", "size": "tiny"},
        "separate": {"weights": "random"},
        "shard": {"samples_per_shard": per_shard},
        "ray": {"prompt_batch_size": batch, "tokenize_batch_size": batch, **(ray or {})},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    return root / "pipeline.yaml"


def read_shards(shard_dir: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """key -> (tokens, feats) over the complete shards under ``shard_dir``, and every key read (repeats kept)."""
    samples, keys = {}, []
    for path in sorted(shard_dir.rglob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in members:
            if name.endswith(".json"):
                key = json.loads(members[name])["key"]
                keys.append(key)
                samples[key] = (np.load(io.BytesIO(members[f"{name[:-5]}.tokens.npy"])),
                                np.load(io.BytesIO(members[f"{name[:-5]}.feats.npy"])))
    return samples, keys
