"""Pipeline job entrypoint: sources -> catalogue -> excerpts -> shard groups -> token and prompt shards.

Run it on a local or remote Ray cluster::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m pipelines.run conf/pipeline/demo.yaml root=$PWD

or directly (starts or joins a local Ray)::

    python -m pipelines.run conf/pipeline/demo.yaml [key=value ...]

``root`` is the folder that relative paths in the config are resolved against (under ``ray job
submit`` the job runs in an uploaded copy of the repo, so pass ``root=$PWD``; default: ``$TRIA_ROOT``
or the current folder). Overrides use dotted keys, e.g. ``shard.samples_per_shard=64
codec.size=tiny prompts.n_variants=2``.

Tokenize once, featurise many: excerpts are partitioned once into shard groups, and each group is
stored as separate field sets (``pipelines.stages.shard``): token shards per codec, prompt shards per
(features, augmentation) config, the same keys in the same order. A run with a new feature or
augmentation config on an existing dataset only writes prompt shards (it loads no codec); a new codec
only writes token shards. ``shard_root`` is a local or shared path or any pyarrow filesystem URI
(``s3://bucket/prefix``: endpoint, region and credentials from the environment, as pyarrow reads them).

Idempotent and resumable: the driver is the single catalogue writer, every row is keyed by a stable
id, and a group's field set is done only when its complete shard is registered. Ray workers write the
shards and return only rows. A re-run does only the missing work; a finished run does none.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tria  # noqa: F401  (torchaudio placeholder)
from pipelines.resources import (ActorPoolConfig, ShardStagePlan, TaskConfig, plan_pool, plan_shard_stages,
                                 task_args)
from pipelines.stages.excerpt import FilterConfig, filter_batch, rows_from_batch
from pipelines.stages.groups import GroupPromptsTokenizer, GroupTokenizer, group_prompts, write_group
from pipelines.stages.prompts import PromptConfig
from pipelines.stages.shard import ShardConfig, remove_partial, remove_unregistered
from tria import fs
from tria.catalog import Catalogue
from tria.codec import CodecConfig
from tria.rows import RejectRow, ShardGroupRow, ShardRow, group_id
from tria.config import ConfigError, apply_overrides, from_dict, load_yaml, resolve_path, to_dict


@dataclass(frozen=True)
class RayConfig:
    # None: the cluster of `ray job submit`, else a running local head, else a new local Ray;
    # "local": always a private new one; "HOST:PORT" or "ray://...": that cluster.
    address: str | None = None
    # GPU stages (pipelines/resources.py): per-actor resources and autoscaling pool bounds, sized from the
    # cluster unless set: a GPU per actor where the cluster has GPUs, pools up to its GPUs (CPUs if none).
    tokenize: ActorPoolConfig = field(default_factory=ActorPoolConfig)
    separate: ActorPoolConfig = field(default_factory=ActorPoolConfig)
    tokenize_actors: int | None = None  # a fixed pool of this many codec actors (sets min = max)
    # Augmentation + features: "auto" = on the codec actors when they hold GPUs, else CPU tasks;
    # "codec_actors" or "cpu_tasks" to choose.
    prompts_on: str = "auto"
    prompts: TaskConfig = field(default_factory=TaskConfig)  # each CPU prompts task (custom resources)
    shard_write: TaskConfig = field(default_factory=TaskConfig)  # each shard-writing task (custom resources)
    prompt_batch_size: int = 4
    tokenize_batch_size: int = 8
    filter_batch_size: int = 4
    # Memory reserved per prompts task (augmentation + features of a batch). Beyond scheduling, a request
    # that differs from the tokenizer's keeps this stage its own task operator: Ray Data otherwise fuses it
    # into the tokenizer actor, and augmentation would run in that one actor instead of on every CPU.
    prompt_task_memory_mb: int = 640  # measured peak ~471 MiB (demo, batch 4, K=2); Ray advises 1.25x headroom


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "pipeline"
    root: str = ""  # base for relative paths; "" = $TRIA_ROOT or the current folder
    catalogue: str = "data/catalogue.duckdb"
    data_dir: str = "data"  # sources' raw/ and stems/ folders
    shard_root: str = "data/shards"
    work_dir: str = "data/work"  # separated stems
    sources: tuple[dict, ...] = ()  # [{name: musdb18hq, location: ...}, ...]; options go to the adapter
    ingest: bool = True  # fetch + consolidate the sources first
    splits: tuple[str, ...] = ("train", "val", "test")
    filter: FilterConfig = field(default_factory=FilterConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    separate: dict = field(default_factory=dict)  # pipelines.stages.separate.SeparateConfig fields
    ray: RayConfig = field(default_factory=RayConfig)

    def path(self, p: str) -> Path:
        return resolve_path(self.root, p)

    @property
    def shard_uri(self) -> str:
        """``shard_root`` as a URI (kept as given) or an absolute local path."""
        return self.shard_root if fs.is_uri(self.shard_root) else str(self.path(self.shard_root))

    @property
    def source_names(self) -> list[str]:
        return [str(s["name"]) for s in self.sources]


def load_pipeline_config(path: str | None, overrides: list[str]) -> PipelineConfig:
    data = apply_overrides(load_yaml(path) if path else {}, overrides)
    return from_dict(PipelineConfig, data)


# ---------------------------------------------------------------------------------------------
# Stages (driver side)
# ---------------------------------------------------------------------------------------------

def ingest_sources(cfg: PipelineConfig, cat: Catalogue) -> None:
    from pipelines.sources import get_source, ingest

    for entry in cfg.sources:
        options = {k: v for k, v in entry.items() if k != "name"}
        if isinstance(options.get("location"), str) and not fs.is_uri(options["location"]):
            options["location"] = str(cfg.path(options["location"]))  # relative to root, like every path here
        source = get_source(entry["name"], **options)
        t0 = time.perf_counter()
        result = ingest(source, cfg.path(cfg.data_dir), catalogue=cat)
        print(f"[ingest] {source.name}: {result.summary()} in {time.perf_counter() - t0:.1f} s", flush=True)


def _stems(cat: Catalogue, cfg: PipelineConfig, role: str) -> list[dict[str, Any]]:
    names = cfg.source_names
    sql = ("SELECT stem_id, source, track, stem, path, split, tier, licence, duration_s FROM stems "
           "WHERE role = ? AND list_contains(?, split)")
    params: list[Any] = [role, list(cfg.splits)]
    if names:
        sql += " AND list_contains(?, source)"
        params.append(names)
    return cat.execute(sql + " ORDER BY stem_id", params).dicts()


def separate_mixes(cfg: PipelineConfig, cat: Catalogue, run_id: str, ray) -> bool:
    """Demucs drums of every mix not separated yet; returns whether there was any."""
    mixes = _stems(cat, cfg, "mix")
    done = {r[0] for r in cat.execute("SELECT parent_stem_id FROM stems WHERE parent_stem_id <> ''").rows}
    todo = [m for m in mixes if m["stem_id"] not in done]
    if not todo:
        return False
    from pipelines.stages.separate import SeparateConfig, Separator, stem_rows_from_batch

    work = cfg.path(cfg.work_dir)
    sep_cfg = from_dict(SeparateConfig, {"out_dir": str(work / "separated"), "cache_dir": str(work / "demucs_cache"),
                                         **cfg.separate})
    print(f"[separate] {len(todo)} mixes with Demucs", flush=True)
    cat.start_stage(run_id, "separate")
    plan = plan_pool("separate", cfg.ray.separate, ray.cluster_resources(), device=sep_cfg.device)
    print(plan.describe(), flush=True)
    ds = ray.data.from_items(todo, override_num_blocks=_n_blocks(len(todo), 1))
    ds = ds.map_batches(Separator, fn_constructor_args=(sep_cfg,), batch_size=1, **plan.map_batches_args())
    record_rows(cat, ds, stem_rows_from_batch, run_id, "separate", len(todo))
    return True


def filter_stems(cfg: PipelineConfig, cat: Catalogue, run_id: str, ray) -> tuple[int, int]:
    stems = _stems(cat, cfg, "drums")
    seen = {r[0] for r in cat.execute("SELECT DISTINCT stem_id FROM excerpts").rows}
    seen |= {r[0] for r in cat.execute("SELECT item FROM rejects WHERE stage = 'filter'").rows}
    todo = [s for s in stems if s["stem_id"] not in seen]
    if not todo:
        return 0, 0
    print(f"[filter] {len(todo)} stems ({sum(s['duration_s'] for s in todo) / 3600:.2f} h)", flush=True)
    cat.start_stage(run_id, "filter")
    cols = ("stem_id", "source", "track", "stem", "path", "split", "tier")
    ds = ray.data.from_items([{k: s[k] for k in cols} for s in todo],
                             override_num_blocks=_n_blocks(len(todo), cfg.ray.filter_batch_size))
    ds = ds.map_batches(filter_batch, fn_kwargs={"config": cfg.filter}, batch_size=cfg.ray.filter_batch_size)
    return record_rows(cat, ds, rows_from_batch, run_id, "filter", len(todo))


def record_rows(cat: Catalogue, ds, to_rows, run_id: str, stage: str, n_in: int) -> tuple[int, int]:
    """Drain a stage's dataset into the catalogue (the driver is its single writer).

    ``to_rows(batch, run_id)`` turns a result batch into ``(rows, rejects)``; each batch is one transaction,
    so an interrupted run keeps what it finished. Returns ``(n_rows, n_rejects)``.
    """
    n_ok = n_bad = 0
    for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
        rows, rejects = to_rows(batch, run_id)
        with cat.transaction():
            cat.upsert(rows)
            cat.upsert(rejects)
        n_ok, n_bad = n_ok + len(rows), n_bad + len(rejects)
    cat.finish_stage(run_id, stage, n_in=n_in, n_out=n_ok, n_rejected=n_bad)
    return n_ok, n_bad


def config_ids(cfg: PipelineConfig) -> dict[str, str]:
    return {"codec_id": cfg.codec.config_id,
            "features_id": cfg.prompts.features.config_id,
            "augment_id": f"aug-{cfg.prompts.augment.config_id}-k{cfg.prompts.n_variants}-s{cfg.prompts.seed}"}


_EXCERPT_SQL = """
    SELECT e.excerpt_id AS key, e.source, e.track, e.stem, s.path, s.split, s.tier, e.offset_s, e.duration_s,
           e.loudness_db"""


def plan_groups(cfg: PipelineConfig, cat: Catalogue, ids: dict[str, str]) -> list[dict[str, Any]]:
    """The shard groups this run writes, each with the field sets it lacks and its excerpts in order.

    First the existing groups (of the selected splits and sources) that lack this codec's tokens or this
    (features, augmentation) config's prompts; then new groups of the excerpts that no group holds yet:
    per (split, tier), sorted by key, ``samples_per_shard`` at a time, numbered after the existing ones.
    """
    names = cfg.source_names
    existing = cat.execute("""
        SELECT g.group_id, g.split, g.tier, g.idx,
               NOT EXISTS (SELECT 1 FROM shards sh WHERE sh.group_id = g.group_id AND sh.status = 'ok'
                           AND sh.kind = 'tokens' AND sh.codec_id = ?) AS want_tokens,
               NOT EXISTS (SELECT 1 FROM shards sh WHERE sh.group_id = g.group_id AND sh.status = 'ok'
                           AND sh.kind = 'prompts' AND sh.features_id = ? AND sh.augment_id = ?) AS want_prompts
        FROM shard_groups g
        WHERE list_contains(?, g.split) AND (? OR EXISTS (
            SELECT 1 FROM group_excerpts ge JOIN excerpts e ON e.excerpt_id = ge.excerpt_id
            WHERE ge.group_id = g.group_id AND list_contains(?, e.source)))
        ORDER BY g.split, g.tier, g.idx""",
        [ids["codec_id"], ids["features_id"], ids["augment_id"], list(cfg.splits), not names, names or [""]]).dicts()
    groups = [g for g in existing if g["want_tokens"] or g["want_prompts"]]
    if groups:
        members = cat.execute(_EXCERPT_SQL + """, ge.group_id
            FROM group_excerpts ge JOIN excerpts e ON e.excerpt_id = ge.excerpt_id JOIN stems s ON s.stem_id = e.stem_id
            WHERE list_contains(?, ge.group_id) ORDER BY ge.group_id, ge.pos""",
            [[g["group_id"] for g in groups]]).dicts()
        by_group: dict[str, list[dict[str, Any]]] = {}
        for m in members:
            by_group.setdefault(m.pop("group_id"), []).append(m)
        for g in groups:
            g["excerpts"] = by_group.get(g["group_id"], [])
    fresh = cat.execute(_EXCERPT_SQL + """
        FROM excerpts e JOIN stems s ON s.stem_id = e.stem_id
        WHERE list_contains(?, s.split) AND (? OR list_contains(?, s.source))
          AND NOT EXISTS (SELECT 1 FROM group_excerpts ge WHERE ge.excerpt_id = e.excerpt_id)
        ORDER BY s.split, s.tier, e.excerpt_id""", [list(cfg.splits), not names, names or [""]]).dicts()
    used = {(r[0], r[1]): r[2] for r in cat.execute(
        "SELECT split, tier, max(idx) FROM shard_groups GROUP BY split, tier").rows}
    by_slice: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in fresh:
        by_slice.setdefault((e["split"], e["tier"]), []).append(e)
    n = cfg.shard.samples_per_shard
    for (split, tier), excerpts in sorted(by_slice.items()):
        first = used.get((split, tier), -1) + 1
        for j, a in enumerate(range(0, len(excerpts), n)):
            groups.append({"group_id": group_id(split, tier, first + j), "split": split, "tier": tier,
                           "idx": first + j, "want_tokens": True, "want_prompts": True,
                           "excerpts": excerpts[a:a + n]})
    return groups


def drop_legacy_shards(cfg: PipelineConfig, cat: Catalogue) -> int:
    """Forget schema-1 shards (tokens and features in one tar); their files go with the orphans.

    Their excerpts then belong to no group, so this run rebuilds them as field sets: an old-layout data
    set (e.g. the demo's, from before field sets) is converted by the next run with no manual step.
    """
    ids = [r[0] for r in cat.execute("SELECT shard_id FROM shards WHERE coalesce(kind, '') = ''").rows]
    if ids:
        with cat.transaction():
            cat.execute("DELETE FROM shard_excerpts WHERE list_contains(?, shard_id)", [ids])
            cat.execute("DELETE FROM shards WHERE list_contains(?, shard_id)", [ids])
        print(f"[shard] {len(ids)} shard(s) of the old layout (tokens and features in one tar): rebuilding "
              "them as token and prompt field sets", flush=True)
    return len(ids)


def clean_shard_root(cfg: PipelineConfig, cat: Catalogue) -> None:
    """Remove partial files and shards no catalogue row records (a run killed mid-write or mid-register)."""
    root = cfg.shard_uri
    if remove_partial(root):
        print("[shard] removed partial shards left by an interrupted run", flush=True)
    orphans = remove_unregistered(root, {r[0] for r in cat.execute("SELECT path FROM shards").rows})
    if orphans:
        print(f"[shard] removed {orphans} shard file(s) written but never registered (run killed in between)",
              flush=True)


def make_shards(cfg: PipelineConfig, cat: Catalogue, run_id: str, ray, groups: list[dict[str, Any]],
                ids: dict[str, str]) -> tuple[list[ShardRow], list[RejectRow]]:
    """One Ray block per shard group: prompts (tasks) -> tokens (codec actors) -> write (workers).

    The driver receives only records (shard rows with their keys, rejects) and registers them: it is the
    single catalogue writer and never holds sample payloads. Stages a run does not need are left out, so
    a run that only adds prompts loads no codec.
    """
    cat.start_stage(run_id, "shard")
    # Any other worker exception reaches the driver as itself, not wrapped in Ray's UserCodeException.
    ray.data.DataContext.get_current().raise_original_map_exception = True
    ds = ray.data.from_items(groups, override_num_blocks=max(1, len(groups)))
    want_prompts = any(g["want_prompts"] for g in groups)
    want_tokens = any(g["want_tokens"] for g in groups)
    stages = shard_stage_plan(cfg, ray.cluster_resources(), want_tokens, want_prompts)
    plan, on_actors = stages.codec, stages.prompts_on_actors
    for note in stages.notes:
        print(note, flush=True)
    if plan is not None:
        print(f"{plan.describe()}; prompts on {'the codec actors' if on_actors else 'CPU tasks'}", flush=True)
    if want_prompts and not on_actors:
        ds = ds.map_batches(group_prompts, fn_kwargs={"config": cfg.prompts, "chunk": cfg.ray.prompt_batch_size},
                            batch_size=1, memory=cfg.ray.prompt_task_memory_mb * 2**20, **task_args(cfg.ray.prompts))
    if want_tokens:
        args = (cfg.codec, cfg.shard.flac_splits, cfg.prompts.duration_s, cfg.ray.tokenize_batch_size)
        ds = ds.map_batches(GroupPromptsTokenizer if on_actors else GroupTokenizer,
                            fn_constructor_args=args + ((cfg.prompts,) if on_actors else ()),
                            batch_size=1, **plan.map_batches_args())
    ds = ds.map_batches(write_group, fn_kwargs={"root": cfg.shard_uri, "ids": ids, "run_id": run_id}, batch_size=1,
                        **task_args(stages.writer))
    written: list[ShardRow] = []
    rejects: list[RejectRow] = []
    failed: list[dict[str, Any]] = []  # groups a worker could not write (full disk, refused upload)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for record in batch["record"]:
            r = json.loads(record)
            if "shard" in r:  # one shard, one transaction: an interrupted run keeps what it registered
                row = ShardRow.from_dict(r["shard"])
                cat.register_shard(row, r["keys"], ShardGroupRow.from_dict(r["group"]))
                written.append(row)
            elif "reject" in r:
                rejects.append(RejectRow.from_dict(r["reject"]))
            elif "write_error" in r:
                failed.append(r["write_error"])
    if failed:  # every group that was written is registered; the next run writes the others
        cat.upsert(rejects)
        more = f" (and {len(failed) - 1} more shard group(s) not written)" if len(failed) > 1 else ""
        raise OSError(failed[0]["errno"], failed[0]["message"] + more)
    cat.upsert(rejects)
    cat.finish_stage(run_id, "shard", n_in=sum(len(g["excerpts"]) for g in groups),
                     n_out=sum(r.n_samples for r in written), n_rejected=len(rejects))
    return written, rejects


def shard_stage_plan(cfg: PipelineConfig, cluster: dict, want_tokens: bool = True,
                     want_prompts: bool = True) -> ShardStagePlan:
    """Where the shard stage's codec actors, prompts and writers run on ``cluster`` (``ray.cluster_resources()``)."""
    pool = tokenize_pool(cfg.ray)
    return plan_shard_stages(
        plan_pool("tokenize", pool, cluster, device=cfg.codec.device) if want_tokens else None, cluster,
        cfg.ray.prompts_on, want_prompts, cfg.ray.shard_write, pool_from_cluster=pool.max_actors is None)


def tokenize_pool(cfg: RayConfig) -> ActorPoolConfig:
    """``ray.tokenize``, with ``ray.tokenize_actors`` (a fixed pool size) applied when set."""
    if cfg.tokenize_actors is None:
        return cfg.tokenize
    return replace(cfg.tokenize, min_actors=cfg.tokenize_actors, max_actors=cfg.tokenize_actors)


def _n_blocks(n_items: int, batch_size: int) -> int:
    """One input block per batch (capped): Ray Data runs a block per task and streams whole blocks, so a
    single block would serialise the stage on one CPU and deliver every result at the very end."""
    return max(1, min(1000, -(-n_items // batch_size)))


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the summary numbers."""
    t_start = time.perf_counter()
    cat = Catalogue(cfg.path(cfg.catalogue))
    timings: dict[str, float] = {}
    try:
        run_id = cat.start_run(cfg.name, to_dict(cfg) | {"root": ""})
        print(f"[pipeline] run {run_id} ({cfg.name}); catalogue {cat.path}", flush=True)
        if cfg.ingest and cfg.sources:
            t0 = time.perf_counter()
            ingest_sources(cfg, cat)
            timings["ingest"] = time.perf_counter() - t0

        ids = config_ids(cfg)
        ray = _ray(cfg)  # started lazily, only when there is work
        written: list[ShardRow] = []
        groups: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        if separate_mixes(cfg, cat, run_id, ray):
            timings["separate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        filter_stems(cfg, cat, run_id, ray)
        timings["filter"] = time.perf_counter() - t0
        drop_legacy_shards(cfg, cat)
        clean_shard_root(cfg, cat)
        groups = plan_groups(cfg, cat, ids)
        if groups:
            n_tok = sum(len(g["excerpts"]) for g in groups if g["want_tokens"])
            n_feat = sum(len(g["excerpts"]) for g in groups if g["want_prompts"])
            print(f"[shard] {len(groups)} shard groups: {n_tok} excerpts to encode, {n_feat} to featurise",
                  flush=True)
            t0 = time.perf_counter()
            written, _ = make_shards(cfg, cat, run_id, ray, groups, ids)
            timings["shards"] = time.perf_counter() - t0
        else:
            print("[shard] nothing to do: every group has this codec's tokens and this config's prompts", flush=True)
        cat.finish_run(run_id)
        return summarize(cfg, cat, ids, written, groups, timings, time.perf_counter() - t_start)
    finally:
        cat.close()


class _LazyRay:
    """Imports and initialises Ray on first use, so a run with nothing to do never starts it."""

    def __init__(self, address: str | None):
        self.address = address
        self._ray = None

    def __getattr__(self, name: str) -> Any:
        if self._ray is None:
            import ray

            if not ray.is_initialized():
                ray.init(address=self.address, log_to_driver=True)
            self._ray = ray
        return getattr(self._ray, name)


def _ray(cfg: PipelineConfig) -> Any:
    return _LazyRay(cfg.ray.address)


def summarize(cfg: PipelineConfig, cat: Catalogue, ids: dict[str, str], written: list[ShardRow],
              groups: list[dict[str, Any]], timings: dict[str, float], total_s: float) -> dict[str, Any]:
    names = cfg.source_names
    where = "WHERE list_contains(?, source)" if names else "WHERE ? IS NULL"
    param = [names] if names else [None]
    hours_in = cat.execute(f"SELECT coalesce(sum(duration_s), 0) / 3600 FROM stems {where} AND role = 'drums'",
                           param).rows[0][0]
    excerpts = cat.execute(f"SELECT count(*) FROM excerpts {where}", param).rows[0][0]
    rejects = Counter(dict(cat.execute(f"SELECT reason, count(*) FROM rejects {where} GROUP BY reason", param).rows))
    this = ("status = 'ok' AND ((kind = 'tokens' AND codec_id = ?) OR "
            "(kind = 'prompts' AND features_id = ? AND augment_id = ?))")
    params = [ids["codec_id"], ids["features_id"], ids["augment_id"]]
    shards = cat.execute(f"SELECT count(*), coalesce(sum(n_bytes), 0) FROM shards WHERE {this}", params).rows[0]
    complete = cat.execute(f"""
        SELECT count(*), coalesce(sum(n_samples), 0) FROM (
            SELECT group_id, min(n_samples) AS n_samples FROM shards WHERE {this}
            GROUP BY group_id HAVING count(DISTINCT kind) = 2)""", params).rows[0]
    encoded = sum(r.n_samples for r in written if r.kind == "tokens")
    featurised = sum(r.n_samples for r in written if r.kind == "prompts")
    audio_s = sum(float(e["duration_s"]) for g in groups for e in g["excerpts"])
    lines = [
        "=" * 72,
        f"pipeline {cfg.name}: done in {total_s:.1f} s",
        f"  drums in catalogue : {hours_in:.3f} h ({', '.join(names) or 'all sources'})",
        f"  excerpts kept      : {excerpts}",
        f"  rejects            : {sum(rejects.values())}" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(rejects.items()))})" if rejects else ""),
        f"  shards (this config): {complete[0]} groups with tokens + prompts holding {complete[1]} samples; "
        f"{shards[0]} shards, {shards[1] / 1e6:.1f} MB under {cfg.shard_uri}",
        f"  written this run   : {len(written)} shards, {sum(r.n_samples for r in written)} samples",
        f"  encoded (codec)    : {encoded} excerpts ({ids['codec_id']})",
        f"  featurised         : {featurised} excerpts ({ids['features_id']}, {ids['augment_id']})",
    ]
    for stage, secs in timings.items():
        rate = f", {audio_s / secs:.1f} s audio/s" if stage == "shards" and secs > 0 and audio_s else ""
        lines.append(f"  {stage:<19}: {secs:.1f} s{rate}")
    lines += [f"  catalogue          : {cat.path}", "=" * 72]
    print("\n".join(lines), flush=True)
    return {"hours_in": hours_in, "excerpts": excerpts, "rejects": dict(rejects), "shards": shards[0],
            "groups": complete[0], "samples": complete[1], "written": len(written), "encoded": encoded,
            "featurised": featurised, "timings": timings}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="pipeline YAML (conf/pipeline/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys, YAML values)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = ap.parse_args(argv)
    try:
        cfg = load_pipeline_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
