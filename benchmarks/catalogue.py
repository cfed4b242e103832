"""Catalogue queries at scale: the named queries (sql/queries/*.sql) on 1M excerpts and 10k shards.

A synthetic catalogue is bulk-loaded into the real schema (``Catalogue`` creates it) with one Arrow
table per table and one ``INSERT ... SELECT`` each: 6 sources, 20k raw files, 50k tracks, 100k
drum stems (10 % of them separated from 5k mixes), 10 excerpts per drum stem (1M), 50k rejects,
10k shards of 100 excerpts (1M shard links), 20 training runs of 500-3000 shards each. Building
must take under a minute.

Each query runs through ``Catalogue.query`` on a read-only connection, as people run them: one
warm-up, then the median of 5. Queries with a parameter run with a typical value (one excerpt,
the train split, one run); ``training_run_inputs`` also runs unfiltered (every run: the largest
join). The baseline is ``SELECT count(*) FROM excerpts``.

    python -m benchmarks.catalogue               # 1M excerpts, 10k shards
    python -m benchmarks.catalogue --quick       # 100k excerpts, 1k shards
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks import _common as C

C.use_test_helpers()
from pipelines.catalogue import Catalogue, list_queries  # noqa: E402

SOURCES = [("musdb18hq", "isolated"), ("moisesdb", "isolated"), ("fsl10k", "isolated"),
           ("mtg_jamendo", "separated"), ("hydrogen", "synthetic"), ("local", "isolated")]
SPLITS = np.array(["train", "val", "test"])
REASONS = np.array(["silent", "too_short", "unreadable", "below_loudness_cutoff", "clipped",
                    "sample_rate_too_low"])
TARGET_BUILD_S = 60.0


def hex_ids(n: int, salt: int) -> list[str]:
    """n distinct 16-hex-digit ids in scrambled order (an odd multiplier is a bijection mod 2**64)."""
    x = (np.arange(n, dtype=np.uint64) + np.uint64(salt << 40)) * np.uint64(0x9E3779B97F4A7C15)
    return [f"{v:016x}" for v in x.tolist()]


def insert(cat: Catalogue, table: str, columns: dict[str, pa.Array | list | np.ndarray]) -> None:
    arrow = pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in columns.items()})
    cat.con.register("_bulk", arrow)
    try:
        cols = ", ".join(columns)
        cat.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _bulk").fetchall()
    finally:
        cat.con.unregister("_bulk")


def build(path: Path, n_excerpts: int, n_shards: int, seed: int = 0) -> dict[str, int]:
    """Bulk-load a synthetic catalogue; returns the row count per table."""
    rng = np.random.default_rng(seed)
    n_stems = n_excerpts // 10
    n_tracks, n_mix, n_raw, n_rejects, n_runs = n_stems // 2, n_stems // 20, n_stems // 5, n_stems // 2, 20
    src_of_track = rng.integers(0, len(SOURCES), n_tracks)
    src_names = np.array([s for s, _ in SOURCES])
    tiers = np.array([t for _, t in SOURCES])
    with Catalogue(path) as cat, cat.transaction():
        insert(cat, "sources", {"source": src_names.tolist(), "title": src_names.tolist(),
                                "licence": ["CC-BY"] * len(SOURCES), "tier": tiers.tolist(),
                                "role": ["drums"] * len(SOURCES)})
        raw_ids = hex_ids(n_raw, 1)
        raw_src = src_names[rng.integers(0, len(SOURCES), n_raw)]
        insert(cat, "raw_files", {"raw_id": raw_ids, "source": raw_src, "name": [f"{r}.zip" for r in raw_ids],
                                  "path": [f"/data/raw/{r}.zip" for r in raw_ids],
                                  "size": rng.integers(1e6, 1e9, n_raw), "status": ["ok"] * n_raw})
        track_ids = hex_ids(n_tracks, 2)
        track_split = SPLITS[rng.choice(3, n_tracks, p=[0.8, 0.1, 0.1])]
        insert(cat, "tracks", {"track_id": track_ids, "source": src_names[src_of_track],
                               "track": [f"track-{i}" for i in range(n_tracks)], "split": track_split,
                               "licence": ["CC-BY"] * n_tracks, "duration_s": rng.uniform(30, 400, n_tracks)})
        # Drum stems (two per track), then mixes; every 10th drum stem is separated from a mix.
        stem_ids, mix_ids = hex_ids(n_stems, 3), hex_ids(n_mix, 4)
        st_track = np.arange(n_stems) % n_tracks
        separated = np.arange(n_stems) % 10 == 0
        parent = np.where(separated, np.array(mix_ids, dtype=object)[np.arange(n_stems) % n_mix], "")
        raw_lists = pa.array([[raw_ids[i % n_raw]] for i in range(n_stems)], pa.list_(pa.string()))
        durations = rng.uniform(30, 400, n_stems)
        insert(cat, "stems", {
            "stem_id": stem_ids, "source": src_names[src_of_track[st_track]],
            "track": [f"track-{i}" for i in st_track],
            "stem": np.where(np.arange(n_stems) < n_tracks, "drums", "kick"), "role": ["drums"] * n_stems,
            "tier": np.where(separated, "separated", tiers[src_of_track[st_track]]),
            "split": track_split[st_track], "licence": ["CC-BY"] * n_stems,
            "path": [f"/data/stems/{s}.wav" for s in stem_ids],
            "sample_rate": np.full(n_stems, 44100, np.int32), "n_channels": np.full(n_stems, 2, np.int32),
            "n_samples": (durations * 44100).astype(np.int64), "raw_ids": raw_lists,
            "parent_stem_id": parent.tolist(), "track_id": np.array(track_ids)[st_track],
            "duration_s": durations})
        mix_track = np.arange(n_mix) % n_tracks
        insert(cat, "stems", {
            "stem_id": mix_ids, "source": ["mtg_jamendo"] * n_mix, "track": [f"track-{i}" for i in mix_track],
            "stem": ["mix"] * n_mix, "role": ["mix"] * n_mix, "tier": ["separated"] * n_mix,
            "split": track_split[mix_track], "licence": ["CC-BY"] * n_mix,
            "path": [f"/data/mix/{s}.wav" for s in mix_ids], "sample_rate": np.full(n_mix, 44100, np.int32),
            "n_channels": np.full(n_mix, 2, np.int32), "n_samples": np.full(n_mix, 44100 * 200, np.int64),
            "raw_ids": pa.array([[raw_ids[i % n_raw]] for i in range(n_mix)], pa.list_(pa.string())),
            "parent_stem_id": [""] * n_mix, "track_id": np.array(track_ids)[mix_track],
            "duration_s": np.full(n_mix, 200.0)})
        # Excerpts: 10 per drum stem.
        ex_ids = hex_ids(n_excerpts, 5)
        ex_stem = np.arange(n_excerpts) // 10
        insert(cat, "excerpts", {
            "excerpt_id": ex_ids, "source": src_names[src_of_track[st_track[ex_stem]]],
            "track": [f"track-{i}" for i in st_track[ex_stem]], "stem": ["drums"] * n_excerpts,
            "offset_s": (np.arange(n_excerpts) % 10) * 30.0, "duration_s": np.full(n_excerpts, 6.0),
            "loudness_db": rng.uniform(-24, -6, n_excerpts), "salience": rng.uniform(0, 18, n_excerpts),
            "stem_id": np.array(stem_ids)[ex_stem]})
        rej = hex_ids(n_rejects, 6)
        insert(cat, "rejects", {"reject_id": rej, "what": ["stem"] * n_rejects, "item": rej,
                                "stage": np.where(rng.random(n_rejects) < 0.8, "filter", "prompts"),
                                "reason": REASONS[rng.integers(0, len(REASONS), n_rejects)],
                                "detail": ["synthetic"] * n_rejects,
                                "source": src_names[rng.integers(0, len(SOURCES), n_rejects)]})
        # Shards: consecutive excerpts (100 per shard), each shard tagged with its first excerpt's split.
        shard_ids = hex_ids(n_shards, 7)
        per = n_excerpts // n_shards
        first = np.arange(n_shards) * per
        insert(cat, "shards", {
            "shard_id": shard_ids, "path": [f"/data/shards/shard-{i:06d}.tar" for i in range(n_shards)],
            "split": track_split[st_track[ex_stem[first]]], "tier": ["isolated"] * n_shards,
            "n_samples": np.full(n_shards, per, np.int64),
            "n_bytes": np.full(n_shards, per * 27_000, np.int64),
            "sha256": [s * 4 for s in shard_ids], "codec_id": ["dac-random-full-s0"] * n_shards,
            "features_id": ["feat-0123456789"] * n_shards, "augment_id": ["aug-0123456789"] * n_shards,
            "status": np.where(rng.random(n_shards) < 0.001, "bad", "ok")})
        shard_of_excerpt = np.minimum(np.arange(n_excerpts) // per, n_shards - 1)
        insert(cat, "shard_excerpts", {"shard_id": np.array(shard_ids)[shard_of_excerpt],
                                       "excerpt_id": ex_ids})
        run_ids = [f"run{i:04d}" for i in range(n_runs)]
        insert(cat, "training_runs", {"run_id": run_ids, "mlflow_run_id": run_ids,
                                      "experiment": ["tria"] * n_runs, "name": run_ids,
                                      "status": ["done"] * n_runs})
        sizes = rng.integers(n_shards // 20, n_shards * 3 // 10, n_runs)
        pairs = [(r, s) for r, k in zip(run_ids, sizes) for s in rng.choice(n_shards, int(k), replace=False)]
        insert(cat, "training_run_shards", {"run_id": [p[0] for p in pairs],
                                            "shard_id": [shard_ids[p[1]] for p in pairs]})
        counts = {t: cat.count(t) for t in ("stems", "excerpts", "rejects", "shards", "shard_excerpts",
                                            "training_run_shards")}
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = C.parser(__doc__)
    ap.add_argument("--excerpts", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    C.setup(args, uses_torch=False)
    if args.quick:
        args.excerpts, args.shards = 100_000, 1_000

    with tempfile.TemporaryDirectory(prefix="tria-bench-cat-") as tmp:
        path = Path(tmp) / "catalogue.duckdb"
        t0 = time.perf_counter()
        counts = build(path, args.excerpts, args.shards)
        build_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        print(f"catalogue benchmark: {', '.join(f'{v:,} {k}' for k, v in counts.items())}; "
              f"built in {build_s:.1f} s ({size_mb:.0f} MB); median of {args.repeats} after 1 warm-up")
        print(C.hardware_line())
        with Catalogue(path, read_only=True) as cat:
            some_excerpt = cat.execute("SELECT excerpt_id FROM excerpts LIMIT 1 OFFSET 777").rows[0][0]
            params = {"excerpt_lineage": {"excerpt_id": some_excerpt}, "shards_of_split": {"split": "train"},
                      "rejects_by_reason": {"stage": "filter"}, "training_run_inputs": {"run_id": "run0007"}}
            base_sql = "SELECT count(*) FROM excerpts"
            cases = [(f"{base_sql} (baseline)", lambda: cat.execute(base_sql))]
            for name in list_queries():
                p = params.get(name, {})
                label = name + (f" ({', '.join(f'{k}=...' for k in p)})" if p else "")
                cases.append((label, lambda n=name, p=p: cat.query(n, **p)))
            cases.append(("training_run_inputs (every run)", lambda: cat.query("training_run_inputs")))
            rows, medians = [], {}
            for label, fn in cases:
                result = fn()  # warm-up
                times = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t)
                medians[label] = statistics.median(times)
                spread = f"{1000 * min(times):.1f}-{1000 * max(times):.1f}"
                rows.append([label, len(result.rows), 1000 * medians[label], spread])
    base = medians[cases[0][0]]
    for r in rows:
        r.append(f"{medians[r[0]] / base:.0f}x")
    print(C.table(["query", "rows", "median ms", "min-max ms", "vs count(*)"], rows))
    slowest = max(list(medians)[1:], key=medians.get)
    C.summary("catalogue", [f"slowest/count(*) = {medians[slowest] / base:.0f}x ({slowest}: "
                            f"{1000 * medians[slowest]:.0f} ms vs {1000 * base:.1f} ms)",
                            f"build {build_s:.0f} s for {counts['excerpts']:,} excerpts "
                            f"({'ok' if build_s < TARGET_BUILD_S else 'MISS'}: "
                            f"target < {TARGET_BUILD_S:.0f} s)"])


if __name__ == "__main__":
    main()
