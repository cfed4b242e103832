"""Peak memory of a pipeline run vs corpus size: it should be bounded by batch sizes and Ray's
object store, not by how much audio goes in.

    python -m benchmarks.pipeline_memory [--loops 6] [--factor 4]

Runs the real job driver (``python -m pipelines.run``, a private local Ray) on a fixture corpus of
``--loops`` drum loops and on one ``--factor`` times larger, sampling the resident memory of the driver
and of every Ray worker of the run every 0.25 s. Prints the peaks and ends with the ratio line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks._common import ROOT, use_test_helpers


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _ray_pids(session_marker: str) -> list[int]:
    """Worker processes of this run: Ray worker processes whose environment names our temp dir."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            if b"ray::" not in cmd and b"default_worker.py" not in cmd:
                continue
            if session_marker.encode() in (d / "environ").read_bytes():
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def run_once(n_loops: int, work: Path) -> dict[str, float]:
    use_test_helpers()
    from pipeline_fixtures import make_drums

    audio = work / "audio"
    make_drums(audio, n_loops=n_loops, seconds=8.0, bad=False)
    cfg = {"name": "mem", "root": str(work),
           "sources": [{"name": "local_folder", "location": str(audio), "tier": "isolated", "licence": "test"}],
           "codec": {"size": "tiny"}, "prompts": {"n_variants": 2, "features": {"preset": "release"}},
           "shard": {"samples_per_shard": 16}, "ray": {"address": "local"}}
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "TRIA_MEM_BENCH": str(work), "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.run", str(work / "cfg.yaml")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_driver = peak_total = 0.0
    while proc.poll() is None:
        driver = _rss_mb(proc.pid)
        workers = sum(_rss_mb(p) for p in _ray_pids(str(work)))
        peak_driver, peak_total = max(peak_driver, driver), max(peak_total, driver + workers)
        time.sleep(0.25)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{out[-3000:]}")
    return {"loops": n_loops, "audio_s": n_loops * 8.0, "wall_s": time.perf_counter() - t0,
            "driver_mb": peak_driver, "total_mb": peak_total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loops", type=int, default=6)
    ap.add_argument("--factor", type=int, default=4)
    args = ap.parse_args()
    rows = []
    for n in (args.loops, args.loops * args.factor):
        with tempfile.TemporaryDirectory() as d:
            rows.append(run_once(n, Path(d)))
    print(f"{'loops':>6} {'audio s':>8} {'wall s':>7} {'driver MB':>10} {'driver+workers MB':>18}")
    for r in rows:
        print(f"{r['loops']:>6} {r['audio_s']:>8.0f} {r['wall_s']:>7.1f} {r['driver_mb']:>10.0f} {r['total_mb']:>18.0f}")
    small, big = rows
    print(f"pipeline_memory: {args.factor}x corpus -> peak RSS x{big['driver_mb'] / small['driver_mb']:.2f} (driver), "
          f"x{big['total_mb'] / small['total_mb']:.2f} (driver + Ray workers); target < 1.25")


if __name__ == "__main__":
    main()
