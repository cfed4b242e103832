"""Pipeline job entrypoint: sources -> catalogue -> excerpts -> prompts+features -> tokens -> shards.

Run it on a local or remote Ray cluster::

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m pipelines.run conf/pipeline/demo.yaml root=$PWD

or directly (starts or joins a local Ray)::

    python -m pipelines.run conf/pipeline/demo.yaml [key=value ...]

``root`` is the folder that relative paths in the config are resolved against (under ``ray job
submit`` the job runs in an uploaded copy of the repo, so pass ``root=$PWD``; default: ``$TRIA_ROOT``
or the current folder). Overrides use dotted keys, e.g. ``shard.samples_per_shard=64
codec.size=tiny prompts.n_variants=2``.

Idempotent and resumable: the driver is the single catalogue writer, every row is keyed by a stable
id, and an excerpt is done only when it sits in a complete, registered shard with the same codec,
feature and augmentation config ids. A re-run does only the missing work; a finished run does none.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import tria  # noqa: F401  (torchaudio placeholder)
from pipelines.catalogue import Catalogue
from pipelines.resources import ActorPoolConfig, TaskConfig, plan_pool, prompts_on_codec_actors, task_args
from pipelines.rows import RejectRow
from pipelines.stages.excerpt import FilterConfig, filter_batch, rows_from_batch
from pipelines.stages.prompts import PromptConfig, prompts_batch
from pipelines.stages.shard import ShardConfig, ShardSink
from pipelines.stages.tokenize import PromptsTokenizer, Tokenizer
from tria.codec import CodecConfig
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


def pending_excerpts(cfg: PipelineConfig, cat: Catalogue, ids: dict[str, str]) -> list[dict[str, Any]]:
    """Excerpts of the selected stems that no complete shard with these config ids holds yet."""
    names = cfg.source_names
    sql = """
        SELECT e.excerpt_id AS key, e.source, e.track, e.stem, e.offset_s, e.duration_s, e.loudness_db,
               s.path, s.split, s.tier
        FROM excerpts e JOIN stems s ON s.stem_id = e.stem_id
        WHERE list_contains(?, s.split) AND (? OR list_contains(?, s.source))
          AND NOT EXISTS (
            SELECT 1 FROM shard_excerpts se JOIN shards sh ON sh.shard_id = se.shard_id
            WHERE se.excerpt_id = e.excerpt_id AND sh.status = 'ok' AND sh.codec_id = ?
              AND sh.features_id = ? AND sh.augment_id = ?)
        ORDER BY e.excerpt_id"""
    return cat.execute(sql, [list(cfg.splits), not names, names or [""], ids["codec_id"], ids["features_id"],
                             ids["augment_id"]]).dicts()


def make_shards(cfg: PipelineConfig, cat: Catalogue, run_id: str, ray, todo: list[dict[str, Any]],
                ids: dict[str, str]) -> tuple[list, list[RejectRow]]:
    sink = ShardSink(cfg.path(cfg.shard_root), cfg.shard, register=cat.register_shard, ids=ids, run_id=run_id)
    if sink.remove_partial():
        print("[shard] removed partial shards left by an interrupted run", flush=True)
    orphans = sink.remove_unregistered({r[0] for r in cat.execute("SELECT path FROM shards").rows})
    if orphans:
        print(f"[shard] removed {orphans} shard file(s) written but never registered (run killed in between)",
              flush=True)
    cat.start_stage(run_id, "shard")
    ds = encoded_excerpts(cfg, ray, todo)
    rejects: list[RejectRow] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["key"])):
            if not batch["ok"][i]:
                rejects.append(RejectRow("excerpt", str(batch["key"][i]), "prompts", str(batch["error"][i]),
                                         source=str(batch["source"][i]), run_id=run_id))
                continue
            meta = {k: _plain(batch[k][i]) for k in ("key", "source", "track", "stem", "split", "tier",
                                                     "offset_s", "duration_s", "loudness_db")}
            meta.update(n_frames=int(batch["n_frames"][i]), sample_rate=44_100, **ids)
            if str(batch["codec_id"][i]) != ids["codec_id"]:
                raise RuntimeError(f"codec id mismatch: actor has {batch['codec_id'][i]}, expected {ids['codec_id']}")
            sink.add({"key": meta["key"], "tokens": batch["tokens"][i], "feats": batch["feats"][i], "meta": meta,
                      "flac": batch["flac"][i] or None})
    written = sink.close()
    cat.upsert(rejects)
    cat.finish_stage(run_id, "shard", n_in=len(todo), n_out=sum(r.n_samples for r in written),
                     n_rejected=len(rejects))
    return written, rejects


def tokenize_pool(cfg: RayConfig) -> ActorPoolConfig:
    """``ray.tokenize``, with ``ray.tokenize_actors`` (a fixed pool size) applied when set."""
    if cfg.tokenize_actors is None:
        return cfg.tokenize
    return replace(cfg.tokenize, min_actors=cfg.tokenize_actors, max_actors=cfg.tokenize_actors)


def encoded_excerpts(cfg: PipelineConfig, ray, todo: list[dict[str, Any]]):
    """The dataset of prompts + tokens of ``todo``: prompts on the codec actors (their device) or as CPU
    tasks before them, as :func:`pipelines.resources.prompts_on_codec_actors` decides for this cluster."""
    plan = plan_pool("tokenize", tokenize_pool(cfg.ray), ray.cluster_resources(), device=cfg.codec.device)
    on_actors = prompts_on_codec_actors(cfg.ray.prompts_on, plan)
    print(f"{plan.describe()}; prompts on {'the codec actors' if on_actors else 'CPU tasks'}", flush=True)
    if on_actors:
        ds = ray.data.from_items(todo, override_num_blocks=_n_blocks(len(todo), cfg.ray.tokenize_batch_size))
        return ds.map_batches(PromptsTokenizer, fn_constructor_args=(cfg.codec, cfg.prompts, cfg.shard.flac_splits),
                              batch_size=cfg.ray.tokenize_batch_size, **plan.map_batches_args())
    ds = ray.data.from_items(todo, override_num_blocks=_n_blocks(len(todo), cfg.ray.prompt_batch_size))
    ds = ds.map_batches(prompts_batch, fn_kwargs={"config": cfg.prompts}, batch_size=cfg.ray.prompt_batch_size,
                        memory=cfg.ray.prompt_task_memory_mb * 2**20, **task_args(cfg.ray.prompts))
    return ds.map_batches(Tokenizer, fn_constructor_args=(cfg.codec, cfg.shard.flac_splits),
                          batch_size=cfg.ray.tokenize_batch_size, **plan.map_batches_args())


def _n_blocks(n_items: int, batch_size: int) -> int:
    """One input block per batch (capped): Ray Data runs a block per task and streams whole blocks, so a
    single block would serialise the stage on one CPU and deliver every result at the very end."""
    return max(1, min(1000, -(-n_items // batch_size)))


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


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
        written: list = []
        t0 = time.perf_counter()
        if separate_mixes(cfg, cat, run_id, ray):
            timings["separate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        filter_stems(cfg, cat, run_id, ray)
        timings["filter"] = time.perf_counter() - t0
        todo = pending_excerpts(cfg, cat, ids)
        if todo:
            print(f"[shard] {len(todo)} excerpts to augment, featurise, tokenize and shard", flush=True)
            t0 = time.perf_counter()
            written, _ = make_shards(cfg, cat, run_id, ray, todo, ids)
            timings["prompts+tokenize+shard"] = time.perf_counter() - t0
        else:
            print("[shard] nothing to do: every excerpt is already in a complete shard", flush=True)
        cat.finish_run(run_id)
        return summarize(cfg, cat, ids, written, todo, timings, time.perf_counter() - t_start)
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


def summarize(cfg: PipelineConfig, cat: Catalogue, ids: dict[str, str], written: list, todo: list,
              timings: dict[str, float], total_s: float) -> dict[str, Any]:
    names = cfg.source_names
    where = "WHERE list_contains(?, source)" if names else "WHERE ? IS NULL"
    param = [names] if names else [None]
    hours_in = cat.execute(f"SELECT coalesce(sum(duration_s), 0) / 3600 FROM stems {where} AND role = 'drums'",
                           param).rows[0][0]
    excerpts = cat.execute(f"SELECT count(*) FROM excerpts {where}", param).rows[0][0]
    rejects = Counter(dict(cat.execute(f"SELECT reason, count(*) FROM rejects {where} GROUP BY reason", param).rows))
    shards = cat.execute("SELECT count(*), coalesce(sum(n_samples), 0), coalesce(sum(n_bytes), 0) FROM shards "
                         "WHERE status = 'ok' AND codec_id = ? AND features_id = ? AND augment_id = ?",
                         [ids["codec_id"], ids["features_id"], ids["augment_id"]]).rows[0]
    audio_s = sum(float(t["duration_s"]) for t in todo)
    lines = [
        "=" * 72,
        f"pipeline {cfg.name}: done in {total_s:.1f} s",
        f"  drums in catalogue : {hours_in:.3f} h ({', '.join(names) or 'all sources'})",
        f"  excerpts kept      : {excerpts}",
        f"  rejects            : {sum(rejects.values())}" + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(rejects.items()))})" if rejects else ""),
        f"  shards (this config): {shards[0]} holding {shards[1]} samples, {shards[2] / 1e6:.1f} MB under {cfg.path(cfg.shard_root)}",
        f"  written this run   : {len(written)} shards, {sum(r.n_samples for r in written)} samples",
    ]
    for stage, secs in timings.items():
        rate = f", {audio_s / secs:.1f} s audio/s" if stage.startswith("prompts") and secs > 0 and audio_s else ""
        lines.append(f"  {stage:<19}: {secs:.1f} s{rate}")
    lines += [f"  catalogue          : {cat.path}", "=" * 72]
    print("\n".join(lines), flush=True)
    return {"hours_in": hours_in, "excerpts": excerpts, "rejects": dict(rejects), "shards": shards[0],
            "samples": shards[1], "written": len(written), "timings": timings}


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
