"""Shard groups and field sets on the driver side (no Ray): planning, the schema-1 conversion, lineage."""

from __future__ import annotations

import duckdb
import numpy as np

from pipelines.run import clean_shard_root, config_ids, drop_legacy_shards, load_pipeline_config, plan_groups
from pipelines.stages.shard import ShardConfig, ShardSink
from tria.catalog import Catalogue
from tria.rows import ExcerptRow, RawFileRow, StemRow, TrackRow


def _catalogue(root, n=5, per_shard=2, ids=None):
    """A catalogue with ``n`` train excerpts, the first ``written`` of them sharded with ``ids``."""
    cfg = load_pipeline_config(None, [f"root={root}", f"shard.samples_per_shard={per_shard}", "ingest=false"])
    cat = Catalogue(cfg.path(cfg.catalogue))
    raw = RawFileRow(source="fx", name="a.wav", path=str(root / "a.wav"), size=1)
    cat.upsert([raw])
    cat.upsert([TrackRow(source="fx", track="t", split="train", licence="CC0")])
    stem = StemRow(source="fx", track="t", stem="drums", role="drums", tier="isolated", split="train",
                   licence="CC0", path=str(root / "a.wav"), sample_rate=44100, n_channels=1, n_samples=44100 * 60,
                   raw_ids=(raw.id,))
    cat.upsert([stem])
    excerpts = [ExcerptRow("fx", "t", "drums", 6.0 * i, 6.0, -20.0) for i in range(n)]
    cat.upsert(excerpts)
    return cfg, cat, excerpts


def _shard(cfg, cat, excerpts, ids):
    sink = ShardSink(cfg.shard_uri, cfg.shard, register=cat.register_shard, ids=ids)
    for e in excerpts:
        sink.add({"key": e.id, "tokens": np.zeros((9, 8), np.int16), "feats": np.zeros((2, 2, 8), np.float16),
                  "meta": {"key": e.id, "split": "train", "tier": "isolated", "n_frames": 8}})
    return sink.close()


def test_new_features_config_plans_prompts_only_and_new_excerpts_get_new_groups(tmp_path):
    cfg, cat, excerpts = _catalogue(tmp_path)
    ids = config_ids(cfg)
    _shard(cfg, cat, excerpts[:4], ids)  # groups 0 and 1, both field sets
    [fresh] = plan_groups(cfg, cat, ids)  # only the 5th excerpt is left
    assert (fresh["idx"], fresh["want_tokens"], fresh["want_prompts"]) == (2, True, True)
    assert [e["key"] for e in fresh["excerpts"]] == [excerpts[4].id]

    four = load_pipeline_config(None, [f"root={tmp_path}", "shard.samples_per_shard=2",
                                       "prompts.features.preset=paper", "prompts.features.n_bands=4"])
    plan = plan_groups(four, cat, config_ids(four))
    assert [(g["idx"], g["want_tokens"], g["want_prompts"]) for g in plan] == [(0, False, True), (1, False, True),
                                                                                (2, True, True)]
    groups = {g["idx"]: [e["key"] for e in g["excerpts"]] for g in plan}
    assert [groups[0], groups[1]] == [sorted(e.id for e in excerpts[:2]), sorted(e.id for e in excerpts[2:4])], \
        "existing groups keep their keys and order"
    codec = load_pipeline_config(None, [f"root={tmp_path}", "shard.samples_per_shard=2", "codec.seed=3"])
    assert [(g["want_tokens"], g["want_prompts"]) for g in plan_groups(codec, cat, config_ids(codec))][:2] == \
        [(True, False), (True, False)], "a new codec keeps the prompt shards"
    cat.close()


def test_lineage_reaches_the_raw_file_from_both_field_sets(tmp_path):
    cfg, cat, excerpts = _catalogue(tmp_path, n=2)
    _shard(cfg, cat, excerpts, config_ids(cfg))
    rows = cat.query("excerpt_lineage", excerpt_id=excerpts[0].id).dicts()
    assert sorted(r["shard_kind"] for r in rows) == ["prompts", "tokens"]
    assert all(r["raw_name"] == "a.wav" for r in rows)
    cat.close()


def test_schema1_catalogue_and_shards_are_converted_by_the_next_run(tmp_path):
    """A catalogue written before field sets (tokens and features in one tar, no kind/group columns)."""
    db = tmp_path / "data" / "catalogue.duckdb"
    db.parent.mkdir(parents=True)
    con = duckdb.connect(str(db), config={"storage_compatibility_version": "v1.5.0"})
    con.execute("""CREATE TABLE shards (shard_id VARCHAR PRIMARY KEY, path VARCHAR NOT NULL, split VARCHAR NOT NULL,
        tier VARCHAR NOT NULL, n_samples BIGINT NOT NULL, n_bytes BIGINT NOT NULL, sha256 VARCHAR NOT NULL,
        codec_id VARCHAR, features_id VARCHAR, augment_id VARCHAR, status VARCHAR NOT NULL, run_id VARCHAR,
        created_at TIMESTAMP NOT NULL DEFAULT current_timestamp)""")
    old = tmp_path / "data" / "shards" / "train" / "isolated" / "shard-000000.tar"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old layout")
    con.execute("INSERT INTO shards (shard_id, path, split, tier, n_samples, n_bytes, sha256, status) "
                "VALUES ('x', ?, 'train', 'isolated', 2, 10, 'ab', 'ok')", [str(old)])
    con.close()
    cfg, cat, excerpts = _catalogue(tmp_path, n=2)
    cat.execute("INSERT INTO shard_excerpts VALUES ('x', ?), ('x', ?)", [excerpts[0].id, excerpts[1].id])
    assert drop_legacy_shards(cfg, cat) == 1
    clean_shard_root(cfg, cat)
    assert not old.exists() and cat.count("shards") == 0 and cat.count("shard_excerpts") == 0
    [group] = plan_groups(cfg, cat, config_ids(cfg))
    assert group["want_tokens"] and group["want_prompts"] and len(group["excerpts"]) == 2
    cat.close()
