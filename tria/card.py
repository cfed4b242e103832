"""The dataset card of a training run: what data, how much, under which licences, with what attribution.

    python -m pipelines.catalogue card --run RUN [--db data/catalogue.duckdb] [--out card.md]

RUN is the run's MLflow run id (as in `training_runs`) or its name (the latest run of that name).
The trainer writes the card of its own run to `<run dir>/dataset_card.md` and logs it to MLflow.

The card is Markdown, built from the catalogue only (read-only DuckDB, the SQL in
`sql/queries/card_tracks.sql` and `card_rejects.sql`):

* hours of the excerpts the run trained on, by source, tier and split (the catalogue's split, and
  the source's own split when the config relabelled it, e.g. MUSDB `test -> train`);
* excerpt counts, and the rejects of the run's sources by stage and reason;
* every licence with its share of the hours;
* the terms that reach the weights: non-commercial and research-only licences (a model trained
  on them inherits the restriction; the authors release their weights under CC BY-NC-SA for this
  reason), share-alike and copyleft (GPL) licences;
* the attribution the licences require: every track under a CC BY-family licence, with its
  author where the catalogue knows one (the Freesound user of an FSL10K loop, with its page).

This module reads the catalogue file directly, so the library never imports the pipeline jobs.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CardError", "TrackUse", "build_card", "write_card", "load_tracks", "resolve_run", "main"]

QUERY_DIR = Path(__file__).resolve().parents[1] / "sql" / "queries"


class CardError(ValueError):
    """No such run, or a catalogue without it."""


@dataclass(frozen=True)
class TrackUse:
    """One track as a training run used it (a row of `card_tracks.sql`)."""

    source: str
    track: str
    split: str
    tier: str
    licence: str
    title: str
    meta: dict
    n_excerpts: int
    hours: float

    @property
    def own_split(self) -> str:
        """The source's own split (before `train_on` relabelled it), or the catalogue's."""
        return str(self.meta.get("source_split") or self.split)


def _connect(db: str | os.PathLike):
    import duckdb

    if not Path(db).is_file():
        raise CardError(f"no catalogue at {db}")
    return duckdb.connect(str(db), read_only=True)


def _query(con, name: str, **variables: Any) -> list[dict[str, Any]]:
    for key, value in variables.items():
        con.execute(f"SET VARIABLE {key} = ?", [value])
    cur = con.execute((QUERY_DIR / f"{name}.sql").read_text())
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, row)) for row in cur.fetchall()]


def resolve_run(con, run: str) -> dict[str, Any]:
    """The `training_runs` row of a run id, or of the latest run with that name."""
    cur = con.execute("SELECT run_id, name, experiment, status, created_at FROM training_runs "
                      "WHERE run_id = ? OR name = ? ORDER BY (run_id = ?) DESC, created_at DESC LIMIT 1",
                      [run, run, run])
    row = cur.fetchone()
    if row is None:
        known = [r[0] for r in con.execute("SELECT coalesce(name, '') || ' (' || run_id || ')' FROM training_runs "
                                           "ORDER BY created_at DESC LIMIT 10").fetchall()]
        raise CardError(f"no training run {run!r} in the catalogue; recent runs: {', '.join(known) or 'none'}")
    return dict(zip(("run_id", "name", "experiment", "status", "created_at"), row))


def load_tracks(con, run_id: str) -> list[TrackUse]:
    rows = _query(con, "card_tracks", run_id=run_id)
    out = []
    for r in rows:
        try:
            meta = json.loads(r["meta_json"] or "{}")
        except ValueError:
            meta = {}
        out.append(TrackUse(r["source"], r["track"], r["split"], r["tier"], r["licence"], r["title"],
                            meta if isinstance(meta, dict) else {}, int(r["n_excerpts"]), float(r["hours"])))
    return out


# ---------------------------------------------------------------------------------------------
# Licence terms


def needs_attribution(licence: str) -> bool:
    """CC BY and its variants (NC, SA, ND) require attribution; CC0 and unknown terms do not say."""
    text = licence.upper().replace(" ", "-")
    return bool(re.search(r"CC-BY", text)) or ("CREATIVE COMMONS" in licence.upper() and "CC0" not in text)


def non_commercial(licence: str) -> bool:
    text = licence.upper().replace(" ", "-")
    low = licence.lower()
    return bool(re.search(r"(^|-)NC(-|$)", text)) or "non-commercial" in low or "noncommercial" in low \
        or "research" in low


def share_alike(licence: str) -> bool:
    """CC BY-SA and copyleft licences (GPL, as some Hydrogen kits use): derivatives keep the licence."""
    text = licence.upper().replace(" ", "-")
    return bool(re.search(r"(^|-)SA(-|$)", text)) or "GPL" in text


def _author(t: TrackUse) -> str:
    for key in ("username", "artist", "author"):
        if t.meta.get(key):
            return str(t.meta[key])
    return ""


def _link(t: TrackUse) -> str:
    if t.source == "fsl10k" and t.track.isdigit():
        return f"https://freesound.org/s/{t.track}/"
    return ""


# ---------------------------------------------------------------------------------------------
# The card


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def build_card(db: str | os.PathLike, run: str) -> str:
    """The Markdown dataset card of training run `run` (id or name) in catalogue `db`.

    Raises:
        CardError: no catalogue file, or no such run in it.
    """
    with _connect(db) as con:
        info = resolve_run(con, run)
        tracks = load_tracks(con, info["run_id"])
        sources = sorted({t.source for t in tracks})
        rejects = _query(con, "card_rejects", sources=",".join(sources)) if sources else []
        about = {r[0]: r[1:] for r in con.execute(
            "SELECT source, title, licence, homepage FROM sources").fetchall()}
        shards = con.execute("SELECT count(*), coalesce(sum(s.n_samples), 0) FROM training_run_shards AS rs "
                             "JOIN shards AS s ON s.shard_id = rs.shard_id WHERE rs.run_id = ?",
                             [info["run_id"]]).fetchone()

    total_h = sum(t.hours for t in tracks)
    total_x = sum(t.n_excerpts for t in tracks)
    out = [f"# Dataset card: training run {info['name'] or info['run_id']}", "",
           f"- run id: `{info['run_id']}` (experiment {info['experiment'] or '-'}, status {info['status']}, "
           f"started {info['created_at']})",
           f"- catalogue: `{db}`",
           f"- training shards: {shards[0]} ({shards[1]} samples); {total_x} distinct excerpts from "
           f"{len(tracks)} tracks, **{total_h:.3f} h** of audio", ""]
    if not tracks:
        out += ["The catalogue links no excerpts to this run's shards.", ""]

    out += ["## Sources", ""]
    out += _table(["source", "title", "licence", "homepage"],
                  [[s, *(about.get(s) or ("", "", ""))] for s in sources]) + [""]

    out += ["## Hours by source, tier and split", "",
            "Split: the catalogue's; `own -> used` where the config trained on another split of the "
            "source (e.g. the authors' configs train on MUSDB train + test).", ""]
    groups: dict[tuple[str, str, str], list[TrackUse]] = defaultdict(list)
    for t in tracks:
        split = t.split if t.own_split == t.split else f"{t.own_split} -> {t.split}"
        groups[(t.source, t.tier, split)].append(t)
    rows = [[s, tier, split, len(g), sum(t.n_excerpts for t in g), f"{sum(t.hours for t in g):.3f}",
             f"{100 * sum(t.hours for t in g) / total_h:.1f} %" if total_h else "-"]
            for (s, tier, split), g in sorted(groups.items())]
    out += _table(["source", "tier", "split", "tracks", "excerpts", "hours", "share"], rows) + [""]

    out += ["## Rejects of these sources", ""]
    if rejects:
        out += _table(["source", "stage", "reason", "count"],
                      [[r["source"], r["stage"], r["reason"], r["n"]] for r in rejects]) + [""]
    else:
        out += ["None recorded.", ""]

    by_licence: dict[str, float] = defaultdict(float)
    for t in tracks:
        by_licence[t.licence] += t.hours
    out += ["## Licences", ""]
    out += _table(["licence", "hours", "share", "attribution", "non-commercial", "share-alike/copyleft"],
                  [[lic, f"{h:.3f}", f"{100 * h / total_h:.1f} %" if total_h else "-",
                    "yes" if needs_attribution(lic) else "no", "yes" if non_commercial(lic) else "no",
                    "yes" if share_alike(lic) else "no"]
                   for lic, h in sorted(by_licence.items(), key=lambda kv: (-kv[1], kv[0]))]) + [""]

    out += ["## Terms that reach the weights", ""]
    nc = {lic: h for lic, h in by_licence.items() if non_commercial(lic)}
    sa = {lic: h for lic, h in by_licence.items() if share_alike(lic)}
    if nc:
        share = 100 * sum(nc.values()) / total_h if total_h else 0.0
        out.append(f"- **Non-commercial / research only**: {share:.1f} % of the hours are under "
                   f"{', '.join(sorted(nc))}. A model trained on them may be used and shared for "
                   "non-commercial purposes only (the authors release their weights under CC BY-NC-SA "
                   "for this reason).")
    else:
        out.append("- No non-commercial or research-only licence among the training data.")
    if sa:
        out.append(f"- **Share-alike / copyleft**: {', '.join(sorted(sa))}: adaptations are to be shared under "
                   "the same licence; releasing the weights under it is the cautious reading.")
    out.append("")

    out += ["## Attribution", ""]
    credited = [t for t in tracks if needs_attribution(t.licence)]
    if not credited:
        out += ["No licence of this data requires attribution.", ""]
    for source in sorted({t.source for t in credited}):
        title = (about.get(source) or (source,))[0] or source
        out += [f"### {title}", ""]
        for t in sorted((t for t in credited if t.source == source), key=lambda t: t.track):
            author, link = _author(t), _link(t)
            kit = f"kit {t.meta['kit']}, " if t.meta.get("kit") else ""
            out.append(f"- \"{t.title}\"" + (f" by {author}" if author else "") + (f", {link}" if link else "")
                       + f" ({kit}{t.licence})")
        out.append("")
    return "\n".join(out)


def write_card(db: str | os.PathLike, run: str, path: str | os.PathLike) -> Path:
    """Write `build_card(db, run)` to `path` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_card(db, run))
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.catalogue card --run RUN [--db PATH] [--out FILE]`: print (or write) the card."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m pipelines.catalogue card",
                                 description="The dataset card of a training run (Markdown).")
    ap.add_argument("--run", required=True, help="the run's MLflow run id, or its name (the latest such run)")
    ap.add_argument("--db", default="data/catalogue.duckdb", help="catalogue file")
    ap.add_argument("--out", help="write the card to this file instead of printing it")
    args = ap.parse_args(argv)
    try:
        if args.out:
            print(f"wrote {write_card(args.db, args.run, args.out)}")
        else:
            print(build_card(args.db, args.run))
    except CardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
