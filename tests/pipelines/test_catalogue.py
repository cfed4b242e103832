"""The DuckDB catalogue: typed rows, idempotent upserts, runs, and the named queries run with the
duckdb CLI (the file must stay readable by duckdb-cli 1.5.x) and through Python."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.catalogue import (
    Catalogue,
    EvalRunRow,
    ExcerptRow,
    RawFileRow,
    RejectRow,
    ShardRow,
    SourceRow,
    StemRow,
    TrackRow,
    TrainingRunRow,
    list_queries,
)
from pipelines.rows import excerpt_id, stable_id

REPO = Path(__file__).resolve().parents[2]
QUERIES = ["card_rejects", "card_tracks",  # the dataset card's: tested in tests/tria/test_card.py
           "excerpt_lineage", "hours_by_source", "rejects_by_reason", "shards_of_split", "summary",
           "training_run_inputs"]


def duckdb_cli() -> str:
    """The `duckdb` CLI (PyPI `duckdb-cli`) next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "duckdb"
    found = str(beside) if beside.exists() else shutil.which("duckdb")
    if not found:
        pytest.fail("the duckdb CLI is required: pip install duckdb-cli==1.5.6 (see requirements)")
    return found


def cli(db: Path, name: str, **variables: str) -> list[dict[str, str]]:
    """Run `duckdb -csv [-cmd "SET VARIABLE ..."] db < sql/queries/<name>.sql` and parse the CSV."""
    cmd = [duckdb_cli(), "-csv"]
    for key, value in variables.items():
        cmd += ["-cmd", f"SET VARIABLE {key} = '{value}'"]
    sql = (REPO / "sql" / "queries" / f"{name}.sql").read_text()
    out = subprocess.run(cmd + [str(db)], input=sql, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return list(csv.DictReader(io.StringIO(out.stdout)))


def stem(source: str, track: str, seconds: float, split: str = "train", tier: str = "isolated",
         role: str = "drums", raw_ids: tuple[str, ...] = (), parent: str = "", name: str = "drums") -> StemRow:
    return StemRow(source=source, track=track, stem=name, role=role, tier=tier, split=split, licence="CC0-1.0",
                   path=f"/data/stems/{source}/{split}/{track}/{name}.wav", sample_rate=44100, n_channels=2,
                   n_samples=int(seconds * 44100), raw_ids=raw_ids, parent_stem_id=parent)


@pytest.fixture
def filled(tmp_path) -> tuple[Path, dict]:
    """A catalogue with two sources, stems, excerpts, rejects, shards and a training run."""
    db = tmp_path / "catalogue.duckdb"
    raw_zip = RawFileRow(source="musdb18hq", name="downloads/musdb18hq.zip", path="/data/raw/m.zip", size=1000,
                         sha256="ab" * 32, url="https://example.org/m.zip")
    raw_mp3 = RawFileRow(source="mtg_jamendo", name="downloads/raw_30s_audio-00.tar", path="/data/raw/j.tar",
                         size=500, sha256="cd" * 32)
    stems = [
        stem("musdb18hq", "A", 3600.0, raw_ids=(raw_zip.id,)),
        stem("musdb18hq", "B", 1800.0, raw_ids=(raw_zip.id,)),
        stem("musdb18hq", "C", 900.0, split="test", raw_ids=(raw_zip.id,)),
        stem("mtg_jamendo", "J", 7200.0, tier="separated", role="mix", raw_ids=(raw_mp3.id,), name="mix"),
    ]
    separated = stem("mtg_jamendo", "J", 7200.0, tier="separated", parent=stems[3].id)
    stems.append(separated)
    excerpts = [ExcerptRow(source="musdb18hq", track="A", stem="drums", offset_s=6.0 * i, duration_s=6.0,
                           loudness_db=-20.0 + i) for i in range(3)]
    excerpts.append(ExcerptRow(source="mtg_jamendo", track="J", stem="drums", offset_s=12.0, duration_s=6.0,
                               loudness_db=-18.0))
    rejects = [RejectRow(what="excerpt", item=f"x{i}", stage="filter", reason="silent", source="musdb18hq")
               for i in range(3)]
    rejects.append(RejectRow(what="track", item="D", stage="consolidate", reason="missing_stem",
                             source="musdb18hq"))
    shard_train = ShardRow(path="/shards/train/isolated/shard-000000.tar", split="train", tier="isolated",
                           n_samples=3, n_bytes=3000, sha256="ef" * 32, codec_id="dac44", features_id="f1")
    shard_sep = ShardRow(path="/shards/train/separated/shard-000000.tar", split="train", tier="separated",
                         n_samples=1, n_bytes=1000, sha256="12" * 32)
    shard_val = ShardRow(path="/shards/val/isolated/shard-000000.tar", split="val", tier="isolated",
                         n_samples=0, n_bytes=10, sha256="34" * 32)
    with Catalogue(db) as cat:
        cat.upsert_sources([SourceRow(name="musdb18hq", title="MUSDB18-HQ", licence="research", tier="isolated",
                                      role="drums")])
        cat.upsert_raw_files([raw_zip, raw_mp3])
        cat.upsert_tracks([TrackRow(source="musdb18hq", track=t, split="train", licence="x") for t in "AB"])
        cat.upsert_stems(stems)
        cat.upsert_excerpts(excerpts)
        cat.add_rejects(rejects)
        cat.register_shard(shard_train, [e.id for e in excerpts[:3]])
        cat.register_shard(shard_sep, [excerpts[3].id])
        cat.register_shard(shard_val)
        cat.start_training_run("mlflow-run-1", [shard_train.path, shard_sep.path], experiment="curriculum",
                               name="coarse-first", config={"lr": 1e-4})
        cat.add_eval_run(EvalRunRow(training_run_id="mlflow-run-1", checkpoint="step-100", split="val",
                                    metrics_json='{"loss": 3.2}'))
        run = cat.start_run("build", {"shard_size": 100})
        cat.finish_stage(run, "download", n_in=2, n_out=2)
    return db, {"excerpts": excerpts, "raw_zip": raw_zip, "raw_mp3": raw_mp3, "shard_train": shard_train}


class TestNamedQueriesWithTheCLI:
    def test_every_query_file_is_tested(self):
        assert list_queries() == QUERIES

    def test_hours_by_source(self, filled):
        db, _ = filled
        rows = cli(db, "hours_by_source")
        got = {(r["source"], r["split"], r["tier"], r["role"]): (r["n_stems"], float(r["stem_hours"]),
                                                                  r["n_excerpts"]) for r in rows}
        assert got == {
            ("musdb18hq", "test", "isolated", "drums"): ("1", 0.25, "0"),
            ("musdb18hq", "train", "isolated", "drums"): ("2", 1.5, "3"),
            ("mtg_jamendo", "train", "separated", "drums"): ("1", 2.0, "1"),
            ("mtg_jamendo", "train", "separated", "mix"): ("1", 2.0, "0"),
        }

    def test_rejects_by_reason(self, filled):
        db, _ = filled
        rows = cli(db, "rejects_by_reason")
        assert [(r["stage"], r["reason"], r["n"]) for r in rows] == [("filter", "silent", "3"),
                                                                     ("consolidate", "missing_stem", "1")]
        assert [r["reason"] for r in cli(db, "rejects_by_reason", stage="consolidate")] == ["missing_stem"]

    def test_shards_of_split(self, filled):
        db, data = filled
        train = cli(db, "shards_of_split", split="train")
        assert [(r["tier"], r["n_samples"]) for r in train] == [("isolated", "3"), ("separated", "1")]
        assert train[0]["path"] == data["shard_train"].path and train[0]["codec_id"] == "dac44"
        assert len(cli(db, "shards_of_split")) == 3
        assert cli(db, "shards_of_split", split="test") == []

    def test_training_run_inputs(self, filled):
        db, _ = filled
        rows = cli(db, "training_run_inputs", run_id="mlflow-run-1")
        assert [(r["split"], r["tier"], r["n_shards"], r["n_samples"], r["sources"]) for r in rows] == [
            ("train", "isolated", "1", "3", "musdb18hq"), ("train", "separated", "1", "1", "mtg_jamendo")]
        assert float(rows[0]["hours"]) == pytest.approx(round(18 / 3600, 4))
        assert cli(db, "training_run_inputs", run_id="no-such-run") == []

    def test_excerpt_lineage_reaches_the_raw_file(self, filled):
        db, data = filled
        [row] = cli(db, "excerpt_lineage", excerpt_id=data["excerpts"][1].id)
        assert (row["source"], row["track"], row["offset_s"]) == ("musdb18hq", "A", "6.0")
        assert row["raw_name"] == "downloads/musdb18hq.zip" and row["raw_url"] == "https://example.org/m.zip"
        assert row["shard_path"] == data["shard_train"].path
        # A Demucs drum stem reaches the raw file of the mix it was separated from.
        [sep] = cli(db, "excerpt_lineage", excerpt_id=data["excerpts"][3].id)
        assert sep["raw_name"] == data["raw_mp3"].name and sep["parent_stem_path"].endswith("/mix.wav")

    def test_summary(self, filled):
        db, _ = filled
        rows = {r["item"]: r for r in cli(db, "summary")}
        assert rows["stems"]["n_rows"] == "5" and float(rows["stems"]["hours"]) == 5.75
        assert rows["excerpts"]["n_rows"] == "4" and rows["shards (ok)"]["n_bytes"] == "4010"
        assert rows["training_runs"]["n_rows"] == "1" and rows["eval_runs"]["n_rows"] == "1"

    @pytest.mark.parametrize("name", QUERIES)
    def test_each_query_runs_on_an_empty_catalogue(self, tmp_path, name):
        db = tmp_path / "empty.duckdb"
        Catalogue(db).close()
        rows = cli(db, name)
        with Catalogue(db, read_only=True) as cat:
            result = cat.query(name)
        if name == "summary":
            assert [r["n_rows"] for r in rows] == ["0"] * 11 and len(result.rows) == 11
        else:
            assert rows == [] and result.rows == ()
            assert len(result.columns) >= 4  # the header is still there


class TestQueriesFromPython:
    def test_parameters_are_bound_not_formatted(self, filled):
        db, data = filled
        with Catalogue(db, read_only=True) as cat:
            assert len(cat.query("excerpt_lineage", excerpt_id=data["excerpts"][0].id).rows) == 1
            assert cat.query("excerpt_lineage", excerpt_id="x' OR '1'='1").rows == ()
            # Variables do not leak into the next query.
            assert len(cat.query("shards_of_split").rows) == 3
            with pytest.raises(ValueError, match="unknown query"):
                cat.query("../schema")
            with pytest.raises(ValueError, match="bad parameter name"):
                cat.query("summary", **{"a; DROP TABLE stems": "1"})

    def test_module_cli_prints_a_table(self, filled):
        db, _ = filled
        out = subprocess.run([sys.executable, "-m", "pipelines.catalogue", "shards_of_split", "--db", str(db),
                              "--param", "split=train"], cwd=REPO, capture_output=True, text=True, check=True)
        lines = out.stdout.splitlines()
        assert lines[0].split()[:3] == ["split", "tier", "path"]
        assert "shard-000000.tar" in lines[2] and lines[-1] == "(2 rows)"
        bad = subprocess.run([sys.executable, "-m", "pipelines.catalogue", "nope", "--db", str(db)], cwd=REPO,
                             capture_output=True, text=True)
        assert bad.returncode == 2 and "unknown query 'nope'" in bad.stderr


class TestWrites:
    def test_upserts_are_idempotent_and_update_in_place(self, tmp_path):
        with Catalogue(tmp_path / "c.duckdb") as cat:
            rows = [stem("s", f"t{i}", 10.0) for i in range(5)]
            assert cat.upsert_stems(rows) == 5
            cat.upsert_stems(rows)
            assert cat.count("stems") == 5
            changed = stem("s", "t0", 20.0)  # same id, new content
            cat.upsert_stems([changed, changed])  # duplicates in one call are collapsed
            assert cat.count("stems") == 5
            assert cat.rows(StemRow, track="t0") == [changed]
            assert {r.track: r for r in cat.rows(StemRow, source="s")}["t1"] == rows[1]

    def test_rows_round_trip_through_the_database(self, tmp_path):
        examples = [
            SourceRow(name="x", title="X", licence="CC0-1.0", tier="synthetic", role="drums", manual_download=True),
            RawFileRow(source="x", name="a.zip", path="/a.zip", size=3, sha256="00", url="u"),
            TrackRow(source="x", track="t", split="val", licence="l", duration_s=1.5, meta_json='{"a": 1}'),
            stem("x", "t", 2.0, raw_ids=("r1", "r2")),
            ExcerptRow(source="x", track="t", stem="drums", offset_s=1.234, duration_s=6.0, loudness_db=-12.5,
                       salience=0.7),
            RejectRow(what="stem", item="i", stage="filter", reason="silent", detail="d", run_id="r"),
            ShardRow(path="/s.tar", split="train", tier="synthetic", n_samples=1, n_bytes=2, sha256="ff"),
            TrainingRunRow(mlflow_run_id="m", experiment="e", name="n", config_json="{}"),
            EvalRunRow(training_run_id="m", checkpoint="c", split="test", metrics_json='{"acc": 0.5}'),
        ]
        with Catalogue(tmp_path / "c.duckdb") as cat:
            for row in examples:
                cat.upsert([row])
                assert cat.rows(type(row)) == [row]
                assert type(row).from_dict(row.to_dict()) == row

    def test_upsert_refuses_mixed_row_types(self, tmp_path):
        with Catalogue(tmp_path / "c.duckdb") as cat, pytest.raises(ValueError, match="one type"):
            cat.upsert([stem("s", "t", 1.0), TrackRow(source="s", track="t", split="train", licence="l")])

    def test_bad_rows_are_refused_with_a_clear_error(self):
        with pytest.raises(ValueError, match="tier must be one of"):
            stem("s", "t", 1.0, tier="great")
        with pytest.raises(ValueError, match="split must be one of"):
            TrackRow(source="s", track="t", split="dev", licence="l")
        with pytest.raises(ValueError, match="status must be one of"):
            ShardRow(path="p", split="train", tier="isolated", n_samples=1, n_bytes=1, sha256="", status="meh")

    def test_stable_ids(self):
        a = ExcerptRow(source="s", track="t", stem="drums", offset_s=1.5, duration_s=6.0, loudness_db=-1.0)
        assert a.id == excerpt_id("s", "t", "drums", 1.5) == stable_id("s", "t", "drums", 1500)
        assert len(a.id) == 16 and a.id.isalnum() and a.stem_id == stable_id("s", "t", "drums")

    def test_bulk_insert_of_many_rows_is_fast(self, tmp_path):
        rows = [ExcerptRow(source="s", track=f"t{i // 10}", stem="drums", offset_s=float(i % 10), duration_s=6.0,
                           loudness_db=-20.0) for i in range(20_000)]
        with Catalogue(tmp_path / "c.duckdb") as cat:
            start = time.perf_counter()
            cat.upsert_excerpts(rows)
            cat.upsert_excerpts(rows)  # the re-run path: every row conflicts
            elapsed = time.perf_counter() - start
            assert cat.count("excerpts") == 20_000
        assert elapsed < 15.0, f"two upserts of 20k rows took {elapsed:.1f} s"

    def test_transaction_rolls_back_everything(self, tmp_path):
        with Catalogue(tmp_path / "c.duckdb") as cat:
            with pytest.raises(RuntimeError), cat.transaction():
                cat.upsert_stems([stem("s", "t", 1.0)])
                with cat.transaction():  # nested: joins the outer one
                    cat.add_rejects([RejectRow(what="stem", item="t", stage="x", reason="y")])
                raise RuntimeError("crash mid-stage")
            assert cat.count("stems") == 0 and cat.count("rejects") == 0


class TestRuns:
    def test_pipeline_run_and_stage_progress(self, tmp_path):
        with Catalogue(tmp_path / "c.duckdb") as cat:
            run = cat.start_run("build", {"b": 2, "a": 1})
            assert run == cat.start_run("build", {"a": 1, "b": 2})  # same config, same run: resumable
            assert run != cat.start_run("build", {"a": 1, "b": 3})
            cat.start_stage(run, "download")
            assert not cat.stage_done(run, "download")
            cat.finish_stage(run, "download", n_in=3, n_out=2, n_rejected=1)
            assert cat.stage_done(run, "download") and not cat.stage_done(run, "filter")
            cat.finish_stage(run, "filter", status="failed", detail="oom")
            assert not cat.stage_done(run, "filter")
            cat.finish_run(run, "failed")
            status = cat.execute("SELECT status, finished_at IS NOT NULL FROM pipeline_runs WHERE run_id = ?",
                                 [run]).rows
            assert status == (("failed", True),)
            progress = cat.execute("SELECT stage, n_in, n_out, n_rejected FROM stage_progress ORDER BY stage").rows
            assert progress == (("download", 3, 2, 1), ("filter", 0, 0, 0))

    def test_bad_shard_leaves_the_split_listing(self, tmp_path):
        shard = ShardRow(path="/s/a.tar", split="train", tier="isolated", n_samples=5, n_bytes=9, sha256="aa")
        with Catalogue(tmp_path / "c.duckdb") as cat:
            cat.register_shard(shard, ["e1", "e2"])
            cat.register_shard(shard, ["e1", "e2"])  # a re-run registers nothing new
            assert cat.count("shards") == 1 and cat.count("shard_excerpts") == 2
            cat.mark_shard_bad(shard.path, "sha256_mismatch")
            assert cat.query("shards_of_split", split="train").rows == ()
            assert cat.query("rejects_by_reason").dicts()[0]["reason"] == "sha256_mismatch"

    def test_training_run_records_its_shards(self, tmp_path):
        with Catalogue(tmp_path / "c.duckdb") as cat:
            run = cat.start_training_run("abc", ["/s/1.tar", "/s/2.tar", "/s/1.tar"])
            cat.finish_training_run(run, "done")
            assert cat.count("training_run_shards") == 2
            assert cat.rows(TrainingRunRow)[0].status == "done"


def test_file_is_written_in_the_cli_storage_version(tmp_path):
    db = tmp_path / "c.duckdb"
    Catalogue(db).close()
    out = subprocess.run([duckdb_cli(), "-csv", str(db), "-c", "SELECT value FROM catalogue_meta"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["value", "2"]  # schema 2: shard groups and field sets
