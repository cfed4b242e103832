"""Helpers shared by the benchmarks: timing with warm-up and repeats, tables, flags, the hardware line.

Every benchmark measures its baseline and its contender in the same process, alternating them
where it can, and ends with ONE summary line of ratios. The machines these run on are shared and
noisy, so a ratio from one run means something and an absolute number compared with another run's
does not.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import math
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def use_test_helpers() -> None:
    """Make ``tests/`` importable (shard_fixtures, pipeline_fixtures) and the repo root (tria, pipelines)."""
    for p in (ROOT, ROOT / "tests"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))


# ----------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------


def parser(doc: str | None, sizes: Sequence[str] | None = None,
           default_size: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with the flags every benchmark takes.

    ``--device``: cpu (default), cuda, or auto (cuda when visible). ``--size``: one or more of
    ``sizes`` separated by commas (when the benchmark has sizes). ``--quick``: a smaller, faster run
    (a smoke test of the script; its numbers are noisier). ``--threads``: torch CPU threads.
    ``--profile``: print a cProfile summary of the contender after the table.
    """
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto (cuda when visible)")
    if sizes:
        ap.add_argument("--size", default=default_size or ",".join(sizes),
                        help=f"comma-separated, from {', '.join(sizes)} (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="a small, fast run (noisier numbers)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile summary of the slow part")
    return ap


def setup(args: argparse.Namespace, uses_torch: bool = True) -> None:
    """Apply ``--threads`` and resolve ``--device`` in place (auto -> cuda when visible)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    elif uses_torch and torch.get_num_threads() > 1 and _load() > (os.cpu_count() or 1):
        # Measured here: with load 7 on 2 cores, 2 torch threads ran small ops 5x slower than 1 thread
        # (each parallel op waits at a barrier for a thread the OS has descheduled).
        print(f"note: load average {_load():.1f} on {os.cpu_count()} cores; torch's "
              f"{torch.get_num_threads()} threads will wait on each other; --threads 1 is steadier.")
    args.device = resolve_device(args.device)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: no CUDA device is visible to torch {torch.__version__}")
    return device


def sizes_of(args: argparse.Namespace, known: Sequence[str]) -> list[str]:
    """The ``--size`` list, validated against ``known``."""
    sizes = [s.strip() for s in args.size.split(",") if s.strip()]
    bad = [s for s in sizes if s not in known]
    if bad or not sizes:
        raise SystemExit(f"--size must be a comma-separated list from {', '.join(known)}, got {args.size!r}")
    return sizes


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def sync(device: str | torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers it."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Timing:
    """Seconds of each timed repeat."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def total(self) -> float:
        return sum(self.times)

    def spread(self) -> str:
        """min-max of the repeats, for the table."""
        return f"{min(self.times):.3g}-{max(self.times):.3g}" if len(self.times) > 1 else "-"


def measure(fn: Callable[[], Any], warmup: int = 1, repeats: int = 3, device: str = "cpu") -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (GPU work included)."""
    for _ in range(warmup):
        fn()
        sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(times)


def measure_alternating(fns: dict[str, Callable[[], Any]], warmup: int = 1, repeats: int = 3,
                        device: str = "cpu") -> dict[str, Timing]:
    """Time several functions in turns (A B, B A, A B, ...), so that a load spike on a shared machine
    slows each of them alike instead of whichever happened to run during it."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
            sync(device)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            out[name].append(time.perf_counter() - t0)
    return {name: Timing(t) for name, t in out.items()}


def profile_summary(fn: Callable[[], Any], top: int = 15, sort: str = "tottime") -> str:
    """cProfile ``fn`` once; the ``top`` functions by ``sort`` as text."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(sort).print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def hardware_line(device: str = "cpu") -> str:
    """Date, CPU model, cores, torch threads and version, load average (and the GPU when used)."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    where = (f"{datetime.date.today().isoformat()}, {model}, nproc {os.cpu_count()}, "
             f"torch {torch.__version__} with {torch.get_num_threads()} threads, load average {load}")
    if str(device).startswith("cuda"):
        where += f", GPU {torch.cuda.get_device_name()}"
    return where


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned text table: first column left, the others right-aligned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in cells])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def summary(bench: str, parts: Sequence[str]) -> None:
    """The ONE last line of a benchmark: its ratios, measured in this process."""
    print(f"{bench}: " + "; ".join(parts), flush=True)
