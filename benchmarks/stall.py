"""Does reading shards stall the trainer? Step time with batches streamed from shards vs held in memory.

The trainer is the real one: ``tria.train.Trainer`` built from a training config over a fixture
catalogue (``tests/shard_fixtures.make_corpus``, T=516 frames, K=4 feature variants, 64 samples per
shard), and each step is ``Trainer.train_step`` (masks, forward, loss, backward, clip, AdamW,
scheduler; fp16 autocast + GradScaler on CUDA, as configured). One pass = one epoch:

* streamed: ``for batch in trainer.state.train_loader`` (ShardLoader, ``data.num_workers``
  workers; 0 by default, so reading happens on the training thread and nothing hides it),
* in memory: the same batches, collected beforehand into a list.

Both passes start at step 0 of epoch 0, so they draw the same masks and do the same work. Passes
alternate (streamed, memory, memory, streamed, ...) so that load on a shared machine hits both.
Target: streamed / in memory <= 1.05 over whole epochs. "steady" compares the median step after the
first of each epoch (the first waits for worker start-up and the first shuffle window): what long
epochs converge to when workers overlap reading with the steps; with 0 workers every window's
decode lands on some later step, so steady understates their cost. The "reader only" column is
one epoch read with no training, per step; 1 + reader/step is the ratio to expect when nothing
overlaps. "reader ms/sample" is the reader alone on one core with no workers, collation included, over
field-set shards as the pipeline writes them (B=24, T=516, K=4 prompts of 4 bands), through the
per-shard index and, in the same run, by walking the tar headers (CPU time of the process, best of 3
epochs) (the path without an index, and the
only path before the index existed; the last table before it measured 0.30-0.37 ms/sample). "wait-based" is 1 + (time blocked in the loader per step) / (in-memory step): the part of
the measured ratio that reading explains. On a shared CPU the measured ratio also carries the
step-to-step jitter of the machine (a few %); where it and the wait-based ratio disagree, the
difference is that jitter, not reading.

    python -m benchmarks.stall                     # CPU: tiny B=8 x 6 steps, small B=2 x 1 step
    python -m benchmarks.stall --size tiny --quick
    python -m benchmarks.stall --device cuda       # B=24 (the authors' batch)

Steady state (``--steady``): the trainer's own loop over long epochs, back to back, through the live
loader (workers persist across epochs, batches pinned and prefetched to the device one ahead), for each
worker count of ``--worker-counts``; worker start-up lands only in a warm-up epoch that is not timed.
The baseline is the same number of steps over batches already held on the device (read once, before),
timed before and after the streamed epochs. The ratio includes every epoch boundary. With
``--simulate-step-ms`` the train step is replaced by a sleep of that length (what a GPU step leaves
the CPU: nothing to do), so a CPU machine predicts the ratio for a GPU whose step takes that long.

    python -m benchmarks.stall --steady --device cuda                  # tiny and small, B=24, 0 and 2 workers
    python -m benchmarks.stall --steady --simulate-step-ms 21,56       # CPU: the H200 step times of tiny/small
"""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import _common as C

C.use_test_helpers()
from shard_fixtures import make_corpus, train_yaml  # noqa: E402
from tria.train import Trainer, load_train_config  # noqa: E402

T = 516
TARGET = 1.05
READER_TARGET_MS = 0.05
SIZES = ("tiny", "small")
DEFAULTS = {  # (batch, steps per pass) per size
    # A CPU step takes seconds (tria_small B=2: 5-15 s here): few steps; reading is tiny beside them.
    "cpu": {"tiny": (8, 6), "small": (2, 1)},
    "cuda": {"tiny": (24, 30), "small": (24, 15)},
}


def build_trainer(root: Path, size: str, batch: int, steps: int, device: str, workers: int,
                  shuffle_buffer: int) -> Trainer:
    """A Trainer over a fixture catalogue holding exactly ``steps`` batches of train samples (made on first use)."""
    if not (root / "catalogue.duckdb").exists():
        make_corpus(root, n={("train", "isolated"): steps * batch}, T=T, K=4, per_shard=64)
    path = train_yaml(root, name=f"stall-{size}-{workers}w", model={"size": size}, device=device, num_iters=10**9,
                      data={"batch_size": batch, "val_batches": 0, "num_workers": workers,
                            "shuffle_buffer": shuffle_buffer})
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer's start-up lines
        return Trainer(load_train_config(str(path), []))


def streamed_pass(trainer: Trainer) -> tuple[list[float], float]:
    """One epoch straight from the loader: (seconds per step, waiting included; seconds waiting)."""
    s = trainer.state
    s.train_data.set_epoch(0)
    s.step, wait, steps = 0, 0.0, []
    batches = iter(s.train_loader)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            break
        wait += time.perf_counter() - t0
        trainer.train_step(batch)  # ends with .item(): the step is complete when it returns
        s.step += 1
        steps.append(time.perf_counter() - t0)
    return steps, wait


def memory_pass(trainer: Trainer, batches: list[dict]) -> list[float]:
    s = trainer.state
    s.step, steps = 0, []
    for batch in batches:
        t0 = time.perf_counter()
        trainer.train_step(batch)
        s.step += 1
        steps.append(time.perf_counter() - t0)
    return steps


def reader_epoch(trainer: Trainer) -> list[dict]:
    trainer.state.train_data.set_epoch(0)
    return list(trainer.state.train_loader)


def reader_ms_per_sample(root: Path, n_samples: int = 1536, batch: int = 24, repeats: int = 3) -> dict[str, float]:
    """ms per sample of one epoch read by ``ShardDataset`` in this process (collation included), through
    the shard indexes and with the indexes removed (header walk)."""
    import numpy as np
    import torch

    from pipelines.stages.shard import ShardConfig, ShardSink
    from tria.data import ReaderConfig, ShardDataset, ShardSpec

    rows = []
    ids = {"codec_id": "bench", "features_id": "bench", "augment_id": "bench"}
    sink = ShardSink(root, ShardConfig(samples_per_shard=256, flac_splits=()),
                     lambda row, keys, group: rows.append(row), ids)
    rng = np.random.default_rng(0)
    for i in range(n_samples):
        key = f"{i:016x}"
        sink.add({"key": key, "tokens": rng.integers(0, 1024, (9, T)).astype(np.int16),
                  "feats": rng.random((4, 4, T)).astype(np.float16),
                  "meta": {"key": key, "split": "train", "tier": "isolated", "n_frames": T}})
    sink.close()
    prompts = {r.group_id: r for r in rows if r.kind == "prompts"}
    specs = [ShardSpec(r.path, r.n_samples, r.sha256, prompts=prompts[r.group_id].path,
                       prompts_sha256=prompts[r.group_id].sha256) for r in rows if r.kind == "tokens"]
    cfg = ReaderConfig(batch_size=batch, drop_last=False)  # the trainer's shuffle buffer and interleave

    def epoch_ms() -> float:
        # CPU time of this process (one torch thread, no workers): on a shared machine wall time mostly
        # measures the other processes; the files are in the page cache after the first epoch.
        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            n = sum(len(b["keys"]) for b in ShardDataset(specs, cfg))
            best = min(best, (time.process_time() - t0) * 1000 / n)
        assert n == n_samples
        return best

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        indexed = epoch_ms()
        for idx in root.rglob("*.tar.idx"):
            idx.unlink()
        walked = epoch_ms()
    finally:
        torch.set_num_threads(threads)
    return {"indexed": indexed, "walked": walked}


def run_size(size: str, batch: int, steps: int, rounds: int, args) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"tria-bench-stall-{size}-") as tmp:
        trainer = build_trainer(Path(tmp), size, batch, steps, args.device, args.workers, args.shuffle_buffer)
        batches = reader_epoch(trainer)  # also warms the page cache
        assert len(batches) == steps and batches[0]["tokens"].shape == (batch, 9, T)
        reader_s = min(C.measure(lambda: reader_epoch(trainer), warmup=0, repeats=2).times)
        trainer.train_step(batches[0])  # warm-up: the first step allocates optimizer state and buffers
        stream, memory, wait = [], [], []  # per-step seconds of every pass; seconds waiting per pass
        for r in range(rounds):
            for mode in (("stream", "memory") if r % 2 == 0 else ("memory", "stream")):  # ABBA
                if mode == "stream":
                    times, w = streamed_pass(trainer)
                    assert len(times) == steps
                    stream.append(times)
                    wait.append(w)
                else:
                    memory.append(memory_pass(trainer, batches))
        profile = C.profile_summary(lambda: streamed_pass(trainer), top=12) if args.profile else ""
        trainer.logger.close()
    stream_step = sum(map(sum, stream)) / (rounds * steps)
    memory_step = sum(map(sum, memory)) / (rounds * steps)

    def later(passes: list[list[float]]) -> float:
        """Median step after the first of each epoch (which waits for worker start-up and the first
        shuffle window): what a long epoch converges to when workers overlap reading with steps."""
        return statistics.median([t for p in passes for t in p[1:]] or [t for p in passes for t in p])

    return {"size": size, "batch": batch, "steps": steps, "stream": stream_step, "memory": memory_step,
            "wait": sum(wait) / (rounds * steps), "reader": reader_s / steps,
            "ratio": stream_step / memory_step, "steady": later(stream) / later(memory), "profile": profile}


def main(argv: list[str] | None = None) -> None:
    ap = C.parser(__doc__, SIZES)
    ap.add_argument("--batch", type=int, default=None, help="default per size: see DEFAULTS")
    ap.add_argument("--steps", type=int, default=None, help="steps per pass (one epoch)")
    ap.add_argument("--rounds", type=int, default=2, help="streamed+memory pass pairs")
    ap.add_argument("--workers", type=int, default=0, help="data.num_workers of the trainer")
    ap.add_argument("--shuffle-buffer", type=int, default=2048,
                    help="data.shuffle_buffer (default: the trainer's)")
    add_steady_flags(ap)
    args = ap.parse_args(argv)
    C.setup(args)
    if args.steady:
        return steady_main(args)
    sizes = C.sizes_of(args, SIZES)
    defaults = DEFAULTS["cuda" if args.device.startswith("cuda") else "cpu"]
    if args.quick:
        sizes = sizes[:1]
    print(f"stall benchmark: Trainer.train_step, T={T}, device {args.device}, "
          f"data.num_workers={args.workers}, {args.rounds} rounds of (streamed, in-memory) epochs")
    print(C.hardware_line(args.device))
    with tempfile.TemporaryDirectory(prefix="tria-bench-reader-") as tmp:
        reader = reader_ms_per_sample(Path(tmp), n_samples=480 if args.quick else 1536)
    print(f"reader alone (1 core, no workers, collation included): {reader['indexed']:.4f} ms/sample through "
          f"the shard index, {reader['walked']:.4f} ms/sample walking tar headers")
    results = []
    for size in sizes:
        batch, steps = defaults[size]
        batch, steps = args.batch or batch, args.steps or (min(steps, 8) if args.quick else steps)
        results.append(run_size(size, batch, steps, args.rounds, args))
    rows = [[r["size"], r["batch"], r["steps"], 1000 * r["memory"], 1000 * r["stream"], 1000 * r["wait"],
             1000 * r["reader"], f"{1 + r['reader'] / r['memory']:.3f}", f"{1 + r['wait'] / r['memory']:.3f}",
             f"{r['steady']:.3f}", f"{r['ratio']:.3f}", "ok" if r["ratio"] <= TARGET else "MISS"]
            for r in results]
    print(C.table(["model", "B", "steps", "in-memory ms/step", "streamed ms/step", "of which wait ms",
                   "reader only ms/step", "expected", "wait-based", "steady", "streamed/in-memory",
                   f"<= {TARGET}"], rows))
    for r in results:
        if r["profile"]:
            print(f"\ncProfile of one streamed epoch ({r['size']}):\n{r['profile']}")
    ratios = ", ".join(f"{r['size']} {r['ratio']:.3f} (B={r['batch']})" for r in results)
    steady = ", ".join(f"{r['size']} {r['steady']:.3f}" for r in results)
    expected = ", ".join(f"{r['size']} {1 + r['reader'] / r['memory']:.3f}" for r in results)
    waited = ", ".join(f"{r['size']} {1 + r['wait'] / r['memory']:.3f}" for r in results)
    C.summary("stall", [f"reader ms/sample = {reader['indexed']:.3f} (target <= {READER_TARGET_MS}; "
                        f"{reader['walked']:.3f} walking tar headers in the same run, "
                        f"x{reader['walked'] / reader['indexed']:.1f}; 1 core, no workers, collation included)",
                        f"streamed/in-memory step time = {ratios} (target <= {TARGET}, {args.device}, "
                        f"{args.workers} workers)",
                        f"wait-based (1 + wait/in-memory step) {waited}",
                        f"steady state (steps after the first of an epoch) {steady}",
                        f"expected from reader-only time {expected}"])



# ----------------------------------------------------------------------------------------------
# Steady state: long epochs back to back through the live loader (persistent workers, device prefetch)
# ----------------------------------------------------------------------------------------------

STEADY = {  # (batch, steps per epoch, timed epochs) per size
    "cuda": {"tiny": (24, 150, 2), "small": (24, 80, 2)},  # ~30-40 s of steps per (size, worker count) on an H200
    "cpu": {"tiny": (24, 3, 1), "small": (24, 2, 1)},  # a CPU step at B=24 takes seconds (tiny) to a minute (small)
}


def add_steady_flags(ap) -> None:
    ap.add_argument("--steady", action="store_true", help="steady-state mode (see above)")
    ap.add_argument("--epochs", type=int, default=None, help="--steady: timed epochs (default: see STEADY)")
    ap.add_argument("--worker-counts", default="0,2", help="--steady: data.num_workers values, comma-separated")
    ap.add_argument("--simulate-step-ms", default=None,
                    help="--steady: replace the train step by a sleep of this many ms; one value per size")


def steady_epochs(trainer: Trainer, epochs: int, step) -> tuple[float, int, float]:
    """``epochs`` epochs straight from the live loader, as ``Trainer.train`` loops: (seconds, steps, waiting)."""
    s = trainer.state
    n, wait = 0, 0.0
    t_start = t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in s.train_loader:
            wait += time.perf_counter() - t0
            step(batch)
            n += 1
            t0 = time.perf_counter()
    return time.perf_counter() - t_start, n, wait


def steady_held(held: list[dict], epochs: int, step) -> tuple[float, int]:
    t0 = time.perf_counter()
    for _ in range(epochs):
        for batch in held:
            step(batch)
    return time.perf_counter() - t0, epochs * len(held)


def run_steady(root: Path, size: str, batch: int, steps: int, epochs: int, workers: int, sleep_s: float | None,
               args) -> dict:
    trainer = build_trainer(root, size, batch, steps, args.device, workers, args.shuffle_buffer)  # corpus: once

    def train(b: dict) -> None:
        trainer.train_step(b)  # ends with .item(): complete when it returns
        trainer.state.step += 1

    step = (lambda b: time.sleep(sleep_s)) if sleep_s else train
    loader = trainer.state.train_loader
    held = list(loader)  # epoch 0, already on the device: the baseline's batches; starts the workers
    assert len(held) == steps and held[0]["tokens"].shape == (batch, 9, T)
    t0 = time.perf_counter()
    list(loader)  # epoch 1: reading alone, workers warm
    reader_s = (time.perf_counter() - t0) / steps
    step(held[0])  # warm-up: optimizer state, allocator, kernels
    steady_epochs(trainer, 1, step)  # epoch 2: a streamed warm-up epoch, not timed
    mem_a = steady_held(held, epochs, step)
    stream_s, n, wait = steady_epochs(trainer, epochs, step)
    mem_b = steady_held(held, epochs, step)
    loader.close()
    trainer.logger.close()
    memory = (mem_a[0] + mem_b[0]) / (mem_a[1] + mem_b[1])
    return {"size": size, "batch": batch, "steps": steps, "epochs": epochs, "workers": workers,
            "simulated": sleep_s, "memory": memory, "stream": stream_s / n, "wait": wait / n, "reader": reader_s,
            "ratio": stream_s / n / memory}


def steady_main(args) -> None:
    sizes = C.sizes_of(args, SIZES)
    workers = [int(w) for w in args.worker_counts.split(",")]
    defaults = STEADY["cuda" if args.device.startswith("cuda") else "cpu"]
    sleeps = [float(x) / 1000 for x in args.simulate_step_ms.split(",")] if args.simulate_step_ms else None
    if sleeps is not None and len(sleeps) != len(sizes):
        raise SystemExit(f"--simulate-step-ms needs one value per size ({', '.join(sizes)}), got {sleeps}")
    if args.quick:
        sizes = sizes[:1]
    what = "simulated steps (sleep)" if sleeps else "Trainer.train_step"
    print(f"stall benchmark, steady state: {what}, T={T}, device {args.device}, workers {workers}; "
          "streamed epochs back to back through the live loader vs batches held on the device")
    print(C.hardware_line(args.device))
    results = []
    for i, size in enumerate(sizes):
        batch, steps, epochs = defaults[size]
        batch, steps, epochs = args.batch or batch, args.steps or steps, args.epochs or epochs
        with tempfile.TemporaryDirectory(prefix=f"tria-bench-steady-{size}-") as tmp:
            for w in workers:
                results.append(run_steady(Path(tmp), size, batch, steps, epochs, w, sleeps[i] if sleeps else None,
                                          args))
    rows = [[r["size"] + (f" (sleep {1000 * r['simulated']:.0f} ms)" if r["simulated"] else ""), r["batch"],
             r["workers"], f"{r['epochs']}x{r['steps']}", 1000 * r["memory"], 1000 * r["stream"], 1000 * r["wait"],
             1000 * r["reader"], f"{1 + r['wait'] / r['memory']:.3f}", f"{r['ratio']:.3f}",
             "ok" if r["ratio"] <= TARGET else "MISS"] for r in results]
    print(C.table(["model", "B", "workers", "epochs x steps", "in-memory ms/step", "streamed ms/step",
                   "of which wait ms", "reader only ms/batch", "wait-based", "streamed/in-memory",
                   f"<= {TARGET}"], rows))
    ratios = ", ".join(f"{r['size']} {r['workers']}w {r['ratio']:.3f}" for r in results)
    waited = ", ".join(f"{r['size']} {r['workers']}w {1 + r['wait'] / r['memory']:.3f}" for r in results)
    C.summary("stall (steady state)", [f"streamed/in-memory step time = {ratios} (target <= {TARGET}, "
                                       f"{args.device}, B={results[0]['batch']}, {what})",
                                       f"wait-based {waited}"])


if __name__ == "__main__":
    main()
