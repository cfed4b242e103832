"""Re-check every registered shard (token and prompt field sets) against its catalogue checksum; mark
the damaged ones bad.

    python -m pipelines.verify --catalogue data/catalogue.duckdb [--workers 4] [--dry-run]

A shard is registered only after it was written whole and hashed (`pipelines.stages.shard`), so a
mismatch now means the file changed since: a truncated copy, flipped bits on a disk, a partial sync to
object storage. Each shard with status "ok" is read again and hashed; one that is missing, has another
size, or another sha256 is marked "bad" (`Catalogue.mark_shard_bad`, which also writes a `rejects` row
with stage "verify"). The trainer selects only "ok" shards, and the next pipeline run re-shards the
excerpts that no "ok" shard holds any more, so marking is all it takes to repair a data set.

Prints a table per split and tier, then one line per damaged shard. Exit status: 0 when every checked
shard is intact, 1 when any is damaged (newly marked, or found with --dry-run), 2 on usage errors.
Shards already marked bad are counted but not re-checked: their excerpts have been or will be re-sharded.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tria import fs
from tria.catalog import Catalogue, QueryResult

__all__ = ["ShardCheck", "check_shard", "verify_catalogue", "main"]


@dataclass(frozen=True)
class ShardCheck:
    """The outcome for one shard: ``problem`` is "" when the file matches the catalogue.

    ``problem`` is one of "missing", "size_mismatch", "checksum_mismatch" or "unreadable"; ``detail``
    says what was found.
    """

    path: str
    split: str
    tier: str
    n_samples: int
    kind: str = ""
    problem: str = ""
    detail: str = ""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_read(path) as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_shard(row: dict) -> ShardCheck:
    """Hash one shard and compare it with its catalogue row (path, n_bytes, sha256, ...)."""
    base = dict(path=row["path"], split=row["split"], tier=row["tier"], n_samples=int(row["n_samples"]),
                kind=row.get("kind") or "")
    try:
        if not fs.exists(row["path"]):
            return ShardCheck(**base, problem="missing", detail="the file does not exist")
        size = fs.size(row["path"])
        if size != int(row["n_bytes"]):
            # Cheap and telling (a truncated copy): no need to hash the file to know it differs.
            return ShardCheck(**base, problem="size_mismatch", detail=f"{size} bytes, catalogue says {row['n_bytes']}")
        digest = _sha256(row["path"])
    except OSError as e:
        return ShardCheck(**base, problem="unreadable", detail=f"{type(e).__name__}: {e}"[:300])
    if digest != row["sha256"]:
        return ShardCheck(**base, problem="checksum_mismatch",
                          detail=f"sha256 {digest[:16]}..., catalogue {row['sha256'][:16]}...")
    return ShardCheck(**base)


def verify_catalogue(path: str | Path, workers: int = 4, dry_run: bool = False) -> tuple[list[ShardCheck], int]:
    """Check every "ok" shard of a catalogue; mark the damaged ones bad unless ``dry_run``.

    Returns:
        ``(checks, n_already_bad)``: one check per "ok" shard (in path order), and how many shards were
        marked bad before this run.

    Raises:
        FileNotFoundError: no catalogue at ``path``.
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"no catalogue at {path}")
    # Read first, then hash without holding the catalogue: a long verification must not block the
    # pipeline (DuckDB has one writer); the write lock is taken only to record the damaged shards.
    with Catalogue(path, read_only=True) as cat:
        rows = cat.execute("SELECT path, split, tier, kind, n_samples, n_bytes, sha256 FROM shards WHERE status = 'ok' "
                           "ORDER BY path").dicts()
        already_bad = int(cat.execute("SELECT count(*) FROM shards WHERE status = 'bad'").rows[0][0])
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # hashlib releases the GIL
        checks = list(pool.map(check_shard, rows))
    bad = [c for c in checks if c.problem]
    if bad and not dry_run:
        with Catalogue(path) as cat, cat.transaction():
            for c in bad:
                cat.mark_shard_bad(c.path, c.problem)
    return checks, already_bad


def summary_table(checks: Sequence[ShardCheck]) -> QueryResult:
    """Per (split, tier, kind): shards checked, intact, damaged, and the samples the damaged ones held."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for c in checks:
        g = groups.setdefault((c.split, c.tier, c.kind), [0, 0, 0, 0])
        g[0] += 1
        g[1 if not c.problem else 2] += 1
        g[3] += c.n_samples if c.problem else 0
    rows = tuple((*key, *counts) for key, counts in sorted(groups.items()))
    return QueryResult(columns=("split", "tier", "kind", "shards", "intact", "damaged", "samples_in_damaged"),
                       rows=rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.verify", description=__doc__.split("\n")[0])
    parser.add_argument("--catalogue", required=True, help="the catalogue file (.duckdb)")
    parser.add_argument("--workers", type=int, default=4, help="shards hashed in parallel")
    parser.add_argument("--dry-run", action="store_true", help="report only; mark nothing")
    args = parser.parse_args(argv)
    try:
        checks, already_bad = verify_catalogue(args.catalogue, workers=args.workers, dry_run=args.dry_run)
    except FileNotFoundError as e:
        parser.error(str(e))
    bad = [c for c in checks if c.problem]
    print(summary_table(checks).format())
    for c in bad:
        print(f"{'DAMAGED' if args.dry_run else 'MARKED BAD'}: {c.path}: {c.problem} ({c.detail})")
    action = "found" if args.dry_run else "marked bad"
    print(f"verified {len(checks)} shards: {len(checks) - len(bad)} intact, {len(bad)} {action}"
          + (f"; {already_bad} were already marked bad" if already_bad else ""))
    if bad and not args.dry_run:
        print("re-run the pipeline to re-shard the excerpts the damaged shards held")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
