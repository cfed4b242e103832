"""Pipeline throughput per stage, in seconds of audio per wall second, on 1 and 2 CPUs.

The stage functions the Ray job runs (``pipelines/run.py``) are called directly on a fixture
corpus (``tests/pipeline_fixtures.make_drums``: rendered stereo drum loops), batch by batch with
the job's default batch sizes:

* filter: ``filter_batch`` over stems (salience search, one excerpt per 30 s region),
* prompts: ``prompts_batch`` over excerpts (load, K=4 augmented prompts, rhythm features),
* tokenize: the ``Tokenizer`` actor class (one codec per worker, loaded once),
* shard: ``ShardSink`` on the driver (the single catalogue writer; it never runs in parallel).

"1 CPU" and "2 CPUs" are process pools of 1 and 2 workers, each worker with ONE torch thread, so
the number of workers is the number of cores in use. A process pool rather than
``ray.init(num_cpus=...)``: the stage functions are the same, Ray's start (~10 s), scheduling and
object-store copies would add fixed costs that drown a small fixture corpus, and on this shared
2-core machine a Ray head's own processes would compete with the workers being measured.
Workers are started and warmed (codec loaded, every stage run once on one file) before any timing.

Each stage runs ``--rounds`` times per pool, alternating 1 and 2 workers; the best time counts.
Throughput counts the audio a stage takes in: stem seconds for filter, excerpt seconds (6 s each)
for the others. "all stages" adds the stage times (stages run one after another here; Ray streams
them, which can only be faster).

Then the whole pipeline (``pipelines.run.run``: ingest, filter, prompts, tokenize, shards, catalogue) on
real local Ray clusters (``ray.cluster_utils.Cluster``) of 1 node and of 2 nodes with ``--node-cpus``
CPUs each, on one corpus (``--ray-stems`` loops of 14 s):

* ``pipeline/bare-encode``: the pipeline's excerpt seconds per wall second, divided by a bare batched DAC
  encode of the same excerpts (audio loaded beforehand) through the same codec actor pool
  (``pipelines.run.shard_stage_plan`` on the same cluster: the pipeline's codec pool); both include
  starting the actors;
* ``2 nodes/1 node``: the pipeline's throughput on 2 nodes over 1 node;
* ``driver bytes/sample``: bytes of the batches the job driver received from Ray Data (every
  ``iter_batches`` of the run, all stages), per sample written.

    python -m benchmarks.pipeline                       # 8 stems of 36 s, tiny codec
    python -m benchmarks.pipeline --codec-size full     # the real DAC architecture (slow on CPU)
    python -m benchmarks.pipeline --node-cpus 8         # on a bigger machine (GPU nodes: --node-gpus 1)
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from benchmarks import _common as C

C.use_test_helpers()
from pipeline_fixtures import make_drums  # noqa: E402
from pipelines.rows import stable_id  # noqa: E402
from pipelines.run import RayConfig  # noqa: E402
from pipelines.stages.excerpt import FilterConfig, filter_batch  # noqa: E402
from pipelines.stages.prompts import PromptConfig, prompts_batch  # noqa: E402
from pipelines.stages.shard import ShardConfig, ShardSink  # noqa: E402
from pipelines.stages.tokenize import Tokenizer  # noqa: E402
from tria.codec import CodecConfig  # noqa: E402

STEM_COLUMNS = ("stem_id", "source", "track", "stem", "path", "split", "tier")
_TOKENIZER: Tokenizer | None = None  # one per worker process, like one per Ray actor


# ----------------------------------------------------------------------------------------------
# Worker side
# ----------------------------------------------------------------------------------------------


def _init_worker(codec: CodecConfig, warm_path: str) -> None:
    """One torch thread per worker; load the codec and run every stage once on one file."""
    global _TOKENIZER
    torch.set_num_threads(1)
    with contextlib.redirect_stdout(io.StringIO()):  # the codec's "using RANDOM-INIT DAC" line per worker
        _TOKENIZER = Tokenizer(codec)
    out = run_stage("filter", stem_batch([warm_path]))
    excerpts = excerpt_batches(out, 1)[0]
    run_stage("tokenize", run_stage("prompts", excerpts))


def _ready(_: int) -> int:
    time.sleep(0.5)  # long enough that the pool hands the next call to another worker
    import os

    return os.getpid()


def run_stage(stage: str, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    if stage == "filter":
        return filter_batch(batch, FilterConfig())
    if stage == "prompts":
        return prompts_batch(batch, PromptConfig())
    if stage == "tokenize":
        return _TOKENIZER(batch)
    raise ValueError(f"unknown stage {stage!r}")


# ----------------------------------------------------------------------------------------------
# Batches (the columns the job's Ray datasets carry)
# ----------------------------------------------------------------------------------------------


def stem_batch(paths: list[str]) -> dict[str, np.ndarray]:
    rows = [{"stem_id": stable_id("bench", Path(p).stem, "drums"), "source": "bench", "track": Path(p).stem,
             "stem": "drums", "path": p, "split": "train", "tier": "synthetic"} for p in paths]
    return {k: np.asarray([r[k] for r in rows]) for k in STEM_COLUMNS}


def excerpt_batches(filtered: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    keep = np.flatnonzero(filtered["kind"] == "excerpt")
    cols = ("key", "source", "track", "stem", "path", "split", "tier", "offset_s", "duration_s",
            "loudness_db")
    return [{c: filtered[c][keep[i:i + size]] for c in cols} for i in range(0, len(keep), size)]


def concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def rebatch(batches: list[dict[str, np.ndarray]], size: int) -> list[dict[str, np.ndarray]]:
    whole = concat(batches)
    n = len(whole["key"])
    return [{k: v[i:i + size] for k, v in whole.items()} for i in range(0, n, size)]


def shard_all(batches: list[dict[str, Any]], root: Path) -> int:
    """The driver's loop of ``make_shards``: one sample per excerpt into the sink; returns samples written."""
    sink = ShardSink(root, ShardConfig(samples_per_shard=8), register=lambda row, keys, group: None,
                     ids={"codec_id": "bench", "features_id": "bench", "augment_id": "bench"})
    for b in batches:
        for i in range(len(b["key"])):
            meta = {k: str(b[k][i]) for k in ("key", "source", "track", "stem", "split", "tier")}
            meta.update(offset_s=float(b["offset_s"][i]), n_frames=int(b["n_frames"][i]))
            sink.add({"key": meta["key"], "tokens": b["tokens"][i], "feats": b["feats"][i], "meta": meta,
                      "flac": b["flac"][i] or None})
    return sum(r.n_samples for r in sink.close())


# ----------------------------------------------------------------------------------------------


def timed_map(pool: ProcessPoolExecutor, stage: str, batches: list[dict]) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    out = list(pool.map(partial(run_stage, stage), batches))
    return time.perf_counter() - t0, out


def start_pool(workers: int, codec: CodecConfig, warm_path: str) -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(codec, warm_path))
    pids: set[int] = set()
    while len(pids) < workers:  # every worker started and warmed before anything is timed
        pids |= set(pool.map(_ready, range(workers)))
    return pool


def main(argv: list[str] | None = None) -> None:
    ap = C.parser(__doc__)
    ap.add_argument("--stems", type=int, default=8)
    ap.add_argument("--stem-seconds", type=float, default=36.0, help="36 s: two 30 s regions, two excerpts")
    ap.add_argument("--codec-size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--rounds", type=int, default=2, help="best of this many passes per stage and pool")
    ap.add_argument("--ray-stems", type=int, default=4, help="loops of 14 s (2 excerpts each) for the Ray runs")
    ap.add_argument("--node-cpus", type=int, default=1, help="CPUs of each Ray node")
    ap.add_argument("--node-gpus", type=int, default=0, help="GPUs of each Ray node (declared to Ray)")
    ap.add_argument("--skip-stages", action="store_true", help="only the whole pipeline on Ray (no per-stage table)")
    args = ap.parse_args(argv)
    C.setup(args)
    if args.device != "cpu":
        raise SystemExit("pipeline.py measures CPU scaling; the tokenize actor's GPU path is not "
                         "benchmarked here")
    if args.quick:
        args.stems, args.stem_seconds, args.rounds, args.ray_stems = 8, 8.0, 1, 2
    stage_parts = [] if args.skip_stages else stage_runs(args)
    whole = ray_runs(args)
    one, two = whole[1], whole[2]
    print(f"\nwhole pipeline on local Ray clusters: {one['samples']} excerpts of 6 s, nodes of {args.node_cpus} CPU(s)"
          f" and {args.node_gpus} GPU(s), {args.codec_size} codec")
    print(C.hardware_line())
    print(C.table(["nodes", "pipeline s", "pipeline audio s/s", "bare encode s", "encode audio s/s",
                   "pipeline/bare-encode", "driver bytes/sample"],
                  [[n, r["pipeline_s"], r["rate"], r["encode_s"], r["encode_rate"], r["rate"] / r["encode_rate"],
                    r["driver_bytes"] / r["samples"]] for n, r in whole.items()]))
    C.summary("pipeline", [
        f"pipeline/bare-encode = {one['rate'] / one['encode_rate']:.2f} (1 node), "
        f"{two['rate'] / two['encode_rate']:.2f} (2 nodes)",
        f"2 nodes/1 node = {two['rate'] / one['rate']:.2f}x",
        f"driver bytes/sample = {one['driver_bytes'] / one['samples']:,.0f}", *stage_parts])


def stage_runs(args) -> list[str]:
    """Each stage function in process pools of 1 and 2 workers; prints the table, returns the summary parts."""
    ray_cfg = RayConfig()
    codec = CodecConfig(size=args.codec_size, device="cpu", batch_size=ray_cfg.tokenize_batch_size)

    with tempfile.TemporaryDirectory(prefix="tria-bench-pipeline-") as tmp:
        tmp = Path(tmp)
        made = make_drums(tmp / "corpus", n_loops=args.stems, seconds=args.stem_seconds, bad=False)
        paths = [str(p) for p in made]
        stem_s = sum(sf.info(p).duration for p in paths)
        stems = [stem_batch(paths[i:i + ray_cfg.filter_batch_size])
                 for i in range(0, len(paths), ray_cfg.filter_batch_size)]
        pools = {w: start_pool(w, codec, paths[0]) for w in (1, 2)}
        try:
            times: dict[str, dict[int, float]] = {}
            outputs: dict[str, list[dict]] = {}
            inputs = {"filter": stems}
            for stage, nxt, size in (("filter", "prompts", ray_cfg.prompt_batch_size),
                                     ("prompts", "tokenize", ray_cfg.tokenize_batch_size),
                                     ("tokenize", None, 0)):
                times[stage] = {1: float("inf"), 2: float("inf")}
                for r in range(args.rounds):  # best of `rounds`, in the order 1 2, 2 1, ...
                    for w in ((1, 2) if r % 2 == 0 else (2, 1)):
                        secs, outputs[stage] = timed_map(pools[w], stage, inputs[stage])
                        times[stage][w] = min(times[stage][w], secs)
                if stage == "filter":
                    inputs["prompts"] = excerpt_batches(concat(outputs["filter"]), size)
                elif nxt:
                    inputs[nxt] = rebatch(outputs[stage], size)
            t0 = time.perf_counter()
            n_sharded = shard_all(outputs["tokenize"], tmp / "shards")
            times["shard"] = {1: time.perf_counter() - t0}
        finally:
            for pool in pools.values():
                pool.shutdown()
    n_exc = sum(len(b["key"]) for b in inputs["prompts"])
    assert n_sharded == n_exc, (n_sharded, n_exc)
    exc_s = 6.0 * n_exc
    audio = {"filter": stem_s, "prompts": exc_s, "tokenize": exc_s, "shard": exc_s}
    print(f"pipeline benchmark: {len(paths)} stems ({stem_s:.0f} s of audio) -> {n_exc} excerpts of 6 s; "
          f"codec {args.codec_size} (random weights); batch sizes filter {ray_cfg.filter_batch_size}, "
          f"prompts {ray_cfg.prompt_batch_size}, tokenize {ray_cfg.tokenize_batch_size}; "
          "K=4 prompts per excerpt")
    print(C.hardware_line())
    rows = []
    for stage, t in times.items():
        t2 = t.get(2)
        rows.append([stage, f"{audio[stage]:.0f}", t[1], t2 if t2 else "-", audio[stage] / t[1],
                     audio[stage] / t2 if t2 else "(driver)", f"{t[1] / t2:.2f}x" if t2 else "-"])
    total = {w: sum(t.get(w, t[1]) for t in times.values()) for w in (1, 2)}
    rows.append(["all stages", f"{exc_s:.0f} (excerpts)", total[1], total[2], exc_s / total[1],
                 exc_s / total[2], f"{total[1] / total[2]:.2f}x"])
    print(C.table(["stage", "audio s in", "1 CPU s", "2 CPUs s", "1 CPU audio s/s", "2 CPUs audio s/s",
                   "2 vs 1 CPU"], rows))
    scaling = ", ".join(f"{s} {t[1] / t[2]:.2f}x" for s, t in times.items() if 2 in t)
    return [f"2 CPUs/1 CPU throughput = {scaling}, all stages {total[1] / total[2]:.2f}x",
            f"1 CPU end to end {exc_s / total[1]:.2f} s of excerpts per s ({args.codec_size} codec)"]



# ----------------------------------------------------------------------------------------------
# The whole pipeline on real Ray clusters
# ----------------------------------------------------------------------------------------------


class DriverBytes:
    """Counts the bytes of every batch that ``Dataset.iter_batches`` hands to this process (the driver)."""

    def __init__(self):
        self.total = 0

    def __enter__(self):
        import ray.data

        self._orig = orig = ray.data.Dataset.iter_batches
        meter = self

        def iter_batches(ds, *a, **kw):
            for batch in orig(ds, *a, **kw):
                meter.total += batch_bytes(batch)
                yield batch

        ray.data.Dataset.iter_batches = iter_batches
        return self

    def __exit__(self, *exc):
        import ray.data

        ray.data.Dataset.iter_batches = self._orig


def batch_bytes(batch: dict[str, np.ndarray]) -> int:
    n = 0
    for v in batch.values():
        if v.dtype == object:
            n += sum(len(x) if isinstance(x, (bytes, str)) else getattr(x, "nbytes", 8) for x in v)
        else:
            n += v.nbytes
    return n


def ray_runs(args) -> dict[int, dict[str, float]]:
    """The whole pipeline and a bare encode of its excerpts on a 1-node, then a 2-node local Ray cluster."""
    import ray

    from pipelines.run import load_pipeline_config, run, shard_stage_plan
    from pipelines.stages.prompts import load_excerpt
    from ray_fixtures import local_cluster, pipeline_yaml

    out = {}
    batch = RayConfig().tokenize_batch_size
    with tempfile.TemporaryDirectory(prefix="tria-bench-ray-") as tmp:
        tmp = Path(tmp)
        make_drums(tmp / "corpus", n_loops=args.ray_stems, seconds=14.0, bad=False)
        node = dict(num_cpus=args.node_cpus, num_gpus=args.node_gpus)
        for n_nodes in (1, 2):
            root = tmp / f"nodes{n_nodes}"
            cfg = load_pipeline_config(str(pipeline_yaml(root, tmp / "corpus", batch=batch)),
                                       [f"root={root}", f"codec.size={args.codec_size}", "prompts.n_variants=4"])
            with local_cluster(head_cpus=args.node_cpus) as (c, _, add_node):
                for _ in range(n_nodes - 1):
                    add_node(**node)
                c.wait_for_nodes()
                ray.init(address=c.address, log_to_driver=False)
                try:
                    with DriverBytes() as meter, contextlib.redirect_stdout(io.StringIO()):
                        t0 = time.perf_counter()
                        summary = run(cfg)
                        pipeline_s = time.perf_counter() - t0
                    from pipelines.catalogue import Catalogue

                    with Catalogue(cfg.path(cfg.catalogue), read_only=True) as cat:
                        rows = cat.execute("SELECT e.offset_s, s.path FROM excerpts e JOIN stems s USING (stem_id) "
                                           "ORDER BY e.excerpt_id").rows
                    items = [{"audio": load_excerpt(p, o, 6.0)[0], "split": "train"} for o, p in rows]
                    plan = shard_stage_plan(cfg, ray.cluster_resources()).codec  # the pipeline's codec pool
                    t0 = time.perf_counter()
                    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch)))
                    ds = ds.map_batches(Tokenizer, fn_constructor_args=(cfg.codec,), batch_size=batch,
                                        **plan.map_batches_args())
                    n_coded = sum(len(b["tokens"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
                    encode_s = time.perf_counter() - t0
                finally:
                    ray.shutdown()
            assert n_coded == summary["samples"] == len(rows), (n_coded, summary["samples"], len(rows))
            audio_s = 6.0 * summary["samples"]
            out[n_nodes] = dict(samples=summary["samples"], pipeline_s=pipeline_s, rate=audio_s / pipeline_s,
                                encode_s=encode_s, encode_rate=audio_s / encode_s, driver_bytes=meter.total)
    return out


if __name__ == "__main__":
    main()
