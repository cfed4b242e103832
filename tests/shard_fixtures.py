"""Build a small catalogue + WebDataset shards directly (no Ray), for trainer and reader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.stages.shard import ShardConfig, ShardSink
from tria.catalog import Catalogue
from tria.codec import CodecConfig
from tria.features import RhythmFeatureConfig
from tria.rows import ExcerptRow, StemRow

CODEC = CodecConfig(size="tiny")
FEATURES = RhythmFeatureConfig.release()


def make_corpus(root: Path, n: dict[tuple[str, str], int] | None = None, T: int = 48, K: int = 2,
                per_shard: int = 4, seed: int = 0) -> Path:
    """Write shards of random but learnable samples and register them; returns the catalogue path.

    Tokens follow a simple rule (codebook k at frame t is a function of a per-sample offset), so a
    model can lower its loss quickly; features are on the release grid (5 levels).
    """
    n = n or {("train", "isolated"): 16, ("val", "isolated"): 4}
    rng = np.random.default_rng(seed)
    cat_path = root / "catalogue.duckdb"
    ids = {"codec_id": CODEC.config_id, "features_id": FEATURES.config_id, "augment_id": "aug-test"}
    with Catalogue(cat_path) as cat:
        sink = ShardSink(root / "shards", ShardConfig(samples_per_shard=per_shard), register=cat.register_shard, ids=ids)
        for (split, tier), count in sorted(n.items()):
            for i in range(count):
                track = f"{split}-{tier}-{i:03d}"
                stem = StemRow(source="fixture", track=track, stem="drums", role="drums", tier=tier, split=split,
                               licence="CC0", path=str(root / f"{track}.wav"), sample_rate=44100, n_channels=1,
                               n_samples=44100 * 6)
                exc = ExcerptRow("fixture", track, "drums", 0.0, 6.0, -20.0)
                cat.upsert([stem])
                cat.upsert([exc])
                offset = int(rng.integers(0, 1024))
                t = np.arange(T)
                tokens = np.stack([(offset + 37 * k + 5 * (t % 8)) % 1024 for k in range(9)]).astype(np.int16)
                feats = (rng.integers(0, 5, (K, FEATURES.n_bands, T)) / 4).astype(np.float16)
                meta = {"key": exc.id, "source": "fixture", "track": track, "stem": "drums", "split": split,
                        "tier": tier, "offset_s": 0.0, "duration_s": 6.0, "n_frames": T, "loudness_db": -20.0,
                        "sample_rate": 44100, **ids}
                sink.add({"key": exc.id, "tokens": tokens, "feats": feats, "meta": meta})
        sink.close()
    return cat_path


def train_yaml(root: Path, name: str = "t", **extra) -> Path:
    """A training config for these shards (tiny model, tiny codec, release features)."""
    import yaml

    cfg = {"name": name, "root": str(root), "out_dir": "runs", "num_iters": 6, "log_every": 1, "val_every": 3,
           "sample_every": 0, "ckpt_every": 3, "model": {"size": "tiny"}, "features": {"preset": "release"},
           "codec": {"size": "tiny"}, "data": {"catalogue": "catalogue.duckdb", "batch_size": 4, "val_batches": 1,
                                               "shuffle_buffer": 8},
           "sampler": {"iterations": 1}}
    for k, v in extra.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
