"""The DuckDB catalogue: the single writer of `sql/schema.sql`, and its named queries.

It lives in the library (not in `pipelines/`) because the trainer, the evaluator and the pipeline all
read it; the pipeline job (`pipelines.catalogue` re-exports this module) is its main writer.
Workers build typed rows (`tria.rows`) and return them; the job driver writes them here.
Every write is an upsert keyed by a content-derived id, so re-running a stage never duplicates a
row. Bulk writes go through one Arrow table per call (thousands of rows in one statement).

Named queries (`sql/queries/<name>.sql`) run as-is in the DuckDB CLI and from here::

    duckdb data/catalogue.duckdb < sql/queries/hours_by_source.sql
    python -m pipelines.catalogue hours_by_source --db data/catalogue.duckdb
    python -m pipelines.catalogue excerpt_lineage --db data/catalogue.duckdb --param excerpt_id=0123abcd

Parameters are DuckDB variables (`getvariable('name')`, set with `SET VARIABLE name = ...` in the
CLI); here they are bound, never formatted into SQL.

The file is written in storage version v1.5.0 so that the DuckDB CLI from PyPI (`duckdb-cli`
1.5.x) can open it; the Python package 2.0 would otherwise write version 69, which it cannot read.
"""

from __future__ import annotations

import argparse
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import duckdb
import pyarrow as pa

from tria.rows import (  # re-exported: `from tria.catalog import StemRow` works
    EvalRunRow,
    ExcerptRow,
    RawFileRow,
    RejectRow,
    Row,
    ShardGroupRow,
    ShardRow,
    SourceRow,
    StemRow,
    TrackRow,
    TrainingRunRow,
    stable_id,
    to_json,
)

__all__ = [
    "Catalogue",
    "EvalRunRow",
    "ExcerptRow",
    "QueryResult",
    "RawFileRow",
    "RejectRow",
    "ShardGroupRow",
    "ShardRow",
    "SourceRow",
    "StemRow",
    "TrackRow",
    "TrainingRunRow",
    "list_queries",
]

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
QUERY_DIR = SQL_DIR / "queries"
SCHEMA_VERSION = "2"  # 2: token and prompt shards as separate field sets of shard groups
# Readable by duckdb-cli 1.5.x (see module docstring).
STORAGE_VERSION = "v1.5.0"

_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


@dataclass(frozen=True)
class QueryResult:
    """Columns and rows of a query, with a plain-text table for people."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def dicts(self) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column."""
        return [dict(zip(self.columns, r)) for r in self.rows]

    def format(self) -> str:
        """Aligned text table, numbers right-aligned, then the row count."""
        cells = [[_cell(v) for v in row] for row in self.rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(self.columns)]
        numeric = [all(isinstance(r[i], (int, float)) for r in self.rows if r[i] is not None)
                   for i in range(len(self.columns))]

        def line(values: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if num else v.ljust(w)
                             for v, w, num in zip(values, widths, numeric)).rstrip()

        out = [line(self.columns), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in cells]
        out.append(f"({len(self.rows)} row{'s' if len(self.rows) != 1 else ''})")
        return "\n".join(out)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value == value else "nan"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def list_queries() -> list[str]:
    """Names of the queries in `sql/queries/`."""
    return sorted(p.stem for p in QUERY_DIR.glob("*.sql"))


def _arrow_schema(cls: type[Row]) -> pa.Schema:
    """Arrow schema of a row class, from its type hints (id column first, a string)."""
    hints = typing.get_type_hints(cls)
    fields = [pa.field(cls.id_column, pa.string())]
    for name in cls.columns()[1:]:
        hint = hints[name]
        if typing.get_origin(hint) is tuple:
            fields.append(pa.field(name, pa.list_(pa.string())))
        else:
            fields.append(pa.field(name, _ARROW_TYPES[hint]))
    return pa.schema(fields)


class Catalogue:
    """Opens (creating if needed) a catalogue file and writes rows into it.

    Args:
        path: the `.duckdb` file; parent folders are created.
        read_only: open without taking the write lock (readers beside the single writer).

    Use as a context manager, or call `close()`.
    """

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self._depth = 0  # transaction nesting
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        config = {} if read_only else {"storage_compatibility_version": STORAGE_VERSION}
        self.con = duckdb.connect(str(self.path), read_only=read_only, config=config)
        if not read_only:
            self._run((SQL_DIR / "schema.sql").read_text())
            self._run(
                # schema.sql migrates older catalogues in place (ALTER ... IF NOT EXISTS), so the version follows
                "INSERT INTO catalogue_meta VALUES ('schema_version', ?) ON CONFLICT DO UPDATE SET value = excluded.value",
                [SCHEMA_VERSION],
            )

    def _run(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Execute a statement whose result is not needed, and consume it (DuckDB 2 refuses new
        work on a connection while a result is unread)."""
        self.con.execute(sql, list(params or [])).fetchall()

    def __enter__(self) -> "Catalogue":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    # ------------------------------------------------------------------ writes

    def upsert(self, rows: Iterable[Row]) -> int:
        """Insert or update rows of one type by their id; returns the number written.

        Duplicates within `rows` keep the last one (DuckDB refuses to update a row twice in
        one statement). Timestamps of existing rows are kept, so a re-run leaves them equal.
        """
        by_id: dict[str, Row] = {}
        for row in rows:
            by_id[row.id] = row
        if not by_id:
            return 0
        classes = {type(r) for r in by_id.values()}
        if len(classes) != 1:
            raise ValueError(f"upsert takes rows of one type, got {sorted(c.__name__ for c in classes)}")
        cls = classes.pop()
        table = self._arrow_table(cls, list(by_id.values()))
        columns = cls.columns()
        col_list = ", ".join(columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        # Table and column names come from the row classes, never from input; values are bound
        # through the registered Arrow table.
        self.con.register("_upsert_rows", table)
        try:
            self._run(
                f"INSERT INTO {cls.table} ({col_list}) SELECT {col_list} FROM _upsert_rows "
                f"ON CONFLICT ({cls.id_column}) DO UPDATE SET {updates}"
            )
        finally:
            self.con.unregister("_upsert_rows")
        return len(by_id)

    @staticmethod
    def _arrow_table(cls: type[Row], rows: Sequence[Row]) -> pa.Table:
        schema = _arrow_schema(cls)
        dicts = [r.to_dict() for r in rows]
        return pa.table({f.name: pa.array([d[f.name] for d in dicts], type=f.type) for f in schema},
                        schema=schema)

    def upsert_sources(self, rows: Iterable[SourceRow]) -> int:
        return self.upsert(rows)

    def upsert_raw_files(self, rows: Iterable[RawFileRow]) -> int:
        return self.upsert(rows)

    def upsert_tracks(self, rows: Iterable[TrackRow]) -> int:
        return self.upsert(rows)

    def upsert_stems(self, rows: Iterable[StemRow]) -> int:
        return self.upsert(rows)

    def upsert_excerpts(self, rows: Iterable[ExcerptRow]) -> int:
        return self.upsert(rows)

    def add_rejects(self, rows: Iterable[RejectRow]) -> int:
        return self.upsert(rows)

    def add_consolidated(self, result: Any) -> None:
        """Write a `pipelines.sources.base.Consolidated` (tracks, stems, rejects) in one transaction."""
        with self.transaction():
            self.upsert(result.tracks)
            self.upsert(result.stems)
            self.upsert(result.rejects)

    def register_shard(self, row: ShardRow, excerpt_ids: Sequence[str] = (),
                       group: ShardGroupRow | None = None) -> str:
        """Record a complete shard and the excerpts in it; returns its shard id.

        The shard's excerpt list is replaced, not merged: a path can be written again after its old
        file was lost (verify marks it bad, the next run reuses it), and the old links would then claim
        excerpts the new file does not hold.

        With ``group``, the shard is one field set of that shard group, and ``excerpt_ids`` must be in
        the group's order. The first shard of a group records the group's keys; any later one must hold
        exactly the same keys in the same order (ValueError otherwise: a reader zips them by position).
        """
        with self.transaction():
            if group is not None:
                self._register_group(group, list(excerpt_ids))
            self._run("DELETE FROM shard_excerpts WHERE shard_id = ?", [row.id])
            self.upsert([row])
            self._link("shard_excerpts", "shard_id", row.id, "excerpt_id", excerpt_ids)
        return row.id

    def _register_group(self, group: ShardGroupRow, keys: list[str]) -> None:
        have = self.group_keys(group.id)
        if not have:
            self.upsert([group])
            links = pa.table({"group_id": pa.array([group.id] * len(keys), pa.string()),
                              "excerpt_id": pa.array(keys, pa.string()),
                              "pos": pa.array(range(len(keys)), pa.int64())})
            self.con.register("_group_rows", links)
            try:
                self._run("INSERT INTO group_excerpts SELECT group_id, excerpt_id, pos FROM _group_rows")
            finally:
                self.con.unregister("_group_rows")
        elif have != keys:
            raise ValueError(f"shard group {group.split}/{group.tier}/{group.idx} holds {len(have)} keys; a shard "
                             f"with {len(keys)} keys in another order cannot be one of its field sets")

    def group_keys(self, group_id: str) -> list[str]:
        """Excerpt ids of a shard group, in its order ([] for an unknown group)."""
        return [r[0] for r in self.con.execute(
            "SELECT excerpt_id FROM group_excerpts WHERE group_id = ? ORDER BY pos", [group_id]).fetchall()]

    def mark_shard_bad(self, path: str, reason: str) -> None:
        """Flag a shard that failed verification, and record why in `rejects`."""
        with self.transaction():
            self._run("UPDATE shards SET status = 'bad' WHERE shard_id = ?", [stable_id(path)])
            self.upsert([RejectRow(what="shard", item=path, stage="verify", reason=reason)])

    def _link(self, table: str, left: str, left_id: str, right: str, right_ids: Iterable[str]) -> None:
        ids = sorted(set(right_ids))
        if not ids:
            return
        links = pa.table({left: pa.array([left_id] * len(ids), pa.string()),
                          right: pa.array(ids, pa.string())})
        self.con.register("_link_rows", links)
        try:
            self._run(
                f"INSERT INTO {table} ({left}, {right}) SELECT {left}, {right} FROM _link_rows "
                "ON CONFLICT DO NOTHING"
            )
        finally:
            self.con.unregister("_link_rows")

    # ------------------------------------------------------------------ runs

    def start_run(self, name: str, config: Mapping[str, Any], run_id: str | None = None) -> str:
        """Open (or re-open) a pipeline run; its id is derived from name and config by default,
        so re-submitting the same job resumes the same run."""
        config_json = to_json(config)
        run_id = run_id or stable_id(name, config_json)
        self._run(
            "INSERT INTO pipeline_runs (run_id, name, config_json, status) VALUES (?, ?, ?, 'running') "
            "ON CONFLICT (run_id) DO UPDATE SET status = 'running', finished_at = NULL",
            [run_id, name, config_json],
        )
        return run_id

    def finish_run(self, run_id: str, status: str = "done") -> None:
        self._run(
            "UPDATE pipeline_runs SET status = ?, finished_at = current_timestamp WHERE run_id = ?",
            [status, run_id],
        )

    def start_stage(self, run_id: str, stage: str) -> None:
        self._run(
            "INSERT INTO stage_progress (run_id, stage, status) VALUES (?, ?, 'running') "
            "ON CONFLICT (run_id, stage) DO UPDATE SET status = 'running', finished_at = NULL",
            [run_id, stage],
        )

    def finish_stage(
        self,
        run_id: str,
        stage: str,
        n_in: int = 0,
        n_out: int = 0,
        n_rejected: int = 0,
        status: str = "done",
        detail: str = "",
    ) -> None:
        """Record a stage's counts and status (creates the progress row if `start_stage` was skipped)."""
        self._run(
            "INSERT INTO stage_progress "
            "(run_id, stage, status, n_in, n_out, n_rejected, detail, finished_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, current_timestamp) "
            "ON CONFLICT (run_id, stage) DO UPDATE SET status = excluded.status, n_in = excluded.n_in, "
            "n_out = excluded.n_out, n_rejected = excluded.n_rejected, detail = excluded.detail, "
            "finished_at = excluded.finished_at",
            [run_id, stage, status, n_in, n_out, n_rejected, detail],
        )

    def stage_done(self, run_id: str, stage: str) -> bool:
        """True when the stage finished with status "done" in this run (so a re-run skips it)."""
        rows = self.con.execute(
            "SELECT status FROM stage_progress WHERE run_id = ? AND stage = ?", [run_id, stage]
        ).fetchall()
        return bool(rows) and rows[0][0] == "done"

    def start_training_run(
        self,
        mlflow_run_id: str,
        shard_paths: Iterable[str],
        experiment: str = "",
        name: str = "",
        config: Mapping[str, Any] | None = None,
    ) -> str:
        """Record a training run (keyed by its MLflow run id) and the shards it reads."""
        row = TrainingRunRow(mlflow_run_id=mlflow_run_id, experiment=experiment, name=name,
                             config_json=to_json(config or {}))
        with self.transaction():
            self.upsert([row])
            shard_ids = (stable_id(p) for p in shard_paths)
            self._link("training_run_shards", "run_id", row.id, "shard_id", shard_ids)
        return row.id

    def finish_training_run(self, run_id: str, status: str = "done") -> None:
        self._run("UPDATE training_runs SET status = ? WHERE run_id = ?", [status, run_id])

    def add_eval_run(self, row: EvalRunRow) -> str:
        self.upsert([row])
        return row.id

    # ------------------------------------------------------------------ reads

    def rows(self, cls: type[Row], **equals: Any) -> list[Row]:
        """Rows of one type whose columns equal the given values (bound), ordered by id."""
        where, params = [], []
        for column, value in equals.items():
            if column not in cls.columns():
                raise ValueError(f"{cls.table} has no column {column!r}")
            where.append(f"{column} = ?")
            params.append(value)
        sql = f"SELECT * FROM {cls.table}" + (" WHERE " + " AND ".join(where) if where else "")
        result = self.execute(sql + f" ORDER BY {cls.id_column}", params)
        return [cls.from_dict(d) for d in result.dicts()]

    def count(self, table: str) -> int:
        """Number of rows of a table of the schema."""
        if table not in self.tables():
            raise ValueError(f"unknown table {table!r}; known: {', '.join(self.tables())}")
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])

    def tables(self) -> list[str]:
        return [r[0] for r in self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
            "ORDER BY table_name").fetchall()]

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> QueryResult:
        """Run SQL with bound parameters and return its result."""
        cursor = self.con.execute(sql, list(params or []))
        columns = tuple(d[0] for d in cursor.description or ())
        return QueryResult(columns=columns, rows=tuple(tuple(r) for r in cursor.fetchall()))

    def query(self, name: str, **params: Any) -> QueryResult:
        """Run the named query `sql/queries/<name>.sql` with its variables bound.

        Args:
            name: query name (see `list_queries()`).
            params: values for `getvariable('<key>')` in the query; unset ones read as NULL.
        """
        path = QUERY_DIR / f"{name}.sql"
        if not _NAME.fullmatch(name) or not path.exists():
            raise ValueError(f"unknown query {name!r}; known: {', '.join(list_queries())}")
        for key, value in params.items():
            if not _NAME.fullmatch(key):
                raise ValueError(f"bad parameter name {key!r} (use [a-z_][a-z0-9_]*)")
            self._run(f"SET VARIABLE {key} = ?", [value])
        try:
            return self.execute(path.read_text())
        finally:
            for key in params:
                self._run(f"RESET VARIABLE {key}")

    def transaction(self) -> "_Transaction":
        """`with cat.transaction():` groups writes; an exception rolls them all back.

        Nested uses join the outermost transaction.
        """
        return _Transaction(self)


class _Transaction:
    def __init__(self, cat: Catalogue) -> None:
        self.cat = cat

    def __enter__(self) -> None:
        if self.cat._depth == 0:
            self.cat._run("BEGIN TRANSACTION")
        self.cat._depth += 1

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.cat._depth -= 1
        if self.cat._depth == 0:
            self.cat._run("ROLLBACK" if exc_type else "COMMIT")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m pipelines.catalogue QUERY [--db PATH] [--param k=v ...]`, or `card --run RUN`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["card"]:  # the dataset card of a training run (tria/card.py)
        from tria.card import main as card_main

        return card_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pipelines.catalogue", description=__doc__.split("\n")[0])
    parser.add_argument("query", nargs="?", help=f"one of: {', '.join(list_queries())}; or `card --run RUN`")
    parser.add_argument("--db", default="data/catalogue.duckdb", help="catalogue file")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="query variable, repeatable")
    parser.add_argument("--list", action="store_true", help="list the named queries")
    args = parser.parse_args(argv)
    if args.list or not args.query:
        print("\n".join(list_queries()))
        return 0
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--param takes KEY=VALUE, got {item!r}")
        params[key] = value
    if not Path(args.db).exists():
        parser.error(f"no catalogue at {args.db}")
    with Catalogue(args.db, read_only=True) as cat:
        try:
            print(cat.query(args.query, **params).format())
        except ValueError as err:
            parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
