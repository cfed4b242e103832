"""`python -m pipelines.sources`: list the sources, or fetch and consolidate one.

    python -m pipelines.sources list [--db data/catalogue.duckdb]
    python -m pipelines.sources ingest musdb18hq --data data --db data/catalogue.duckdb
    python -m pipelines.sources ingest moisesdb --data data --location ~/Downloads/moisesdb.zip
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pipelines.sources import get_source, ingest, list_sources, source_info

_COUNTS = """
SELECT s.source,
       (SELECT count(*) FROM raw_files r WHERE r.source = s.source AND r.status = 'ok') AS raw_files,
       (SELECT count(*) FROM stems t WHERE t.source = s.source) AS stems,
       (SELECT coalesce(sum(duration_s), 0) / 3600 FROM stems t WHERE t.source = s.source) AS hours
FROM (SELECT unnest(?::VARCHAR[]) AS source) AS s
"""


def list_table(db: str | None = None) -> str:
    """Every source with licence, tier, role and (with a catalogue) its downloaded/consolidated counts."""
    from pipelines.catalogue import Catalogue, QueryResult

    names = list_sources()
    counts: dict[str, tuple] = {}
    if db:
        with Catalogue(db, read_only=True) as cat:
            counts = {r[0]: r[1:] for r in cat.execute(_COUNTS, [names]).rows}
    rows = []
    for name in names:
        try:
            info = source_info(name)
            meta = (info.licence, info.tier, info.role, "yes" if info.manual_download else "no")
        except ImportError as err:  # an adapter module that is missing or broken
            meta = (f"unavailable: {err}", "", "", "")
        raw, stems, hours = counts.get(name, (None, None, None))
        rows.append((name, *meta, raw, stems, round(hours, 4) if hours is not None else None))
    columns = ("source", "licence", "tier", "role", "manual", "raw_files", "stems", "hours")
    return QueryResult(columns=columns, rows=tuple(rows)).format()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.sources", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="show every source")
    p_list.add_argument("--db", help="catalogue file, for downloaded/consolidated counts")
    p_ingest = sub.add_parser("ingest", help="fetch and consolidate one source")
    p_ingest.add_argument("name", choices=list_sources())
    p_ingest.add_argument("--data", default="data", help="data root (raw/ and stems/ go under it)")
    p_ingest.add_argument("--db", help="catalogue file to record rows in")
    p_ingest.add_argument("--location", help="an archive or folder you already have: replaces the download")
    p_ingest.add_argument("--config", help="registry YAML (default conf/sources.yaml)")
    p_ingest.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "list":
        if args.db and not Path(args.db).exists():
            parser.error(f"no catalogue at {args.db}")
        print(list_table(args.db))
        return 0
    overrides = {"location": args.location} if args.location else {}
    source = get_source(args.name, config=args.config, **overrides)
    if args.db:
        from pipelines.catalogue import Catalogue

        with Catalogue(args.db) as cat:
            result = ingest(source, args.data, cat, progress=not args.no_progress)
    else:
        result = ingest(source, args.data, progress=not args.no_progress)
    print(f"{args.name}: {result.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
