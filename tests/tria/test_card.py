"""The dataset card of a training run, from a catalogue built with the real writer (DuckDB)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.catalogue import Catalogue
from pipelines.rows import ExcerptRow, RejectRow, ShardRow, SourceRow, StemRow, TrackRow
from tria.card import CardError, build_card, needs_attribution, non_commercial, share_alike

REPO = Path(__file__).resolve().parents[2]

# source -> (licence, tier, [(track, own split, catalogue split, meta, n excerpts of 6 s)])
CONTENT = {
    "fsl10k": ("per-loop Creative Commons", "isolated", [
        ("1001", "train", "train", {"username": "beatmaker", "source_split": "train"}, 2, "CC-BY-3.0"),
        ("1002", "test", "train", {"username": "zero_user", "source_split": "test"}, 1, "CC0-1.0"),
        ("1003", "val", "train", {"username": "nc_user", "source_split": "val"}, 1, "CC-BY-NC-4.0"),
    ]),
    "moisesdb": ("CC-BY-NC-SA-4.0", "isolated", [
        ("uuid-1", "train", "train", {"artist": "Band One", "song": "Song", "source_split": "train"}, 3, None),
    ]),
    "musdb18hq": ("MUSDB18 terms: research use only (mixed per-track licences)", "isolated", [
        ("A - B", "test", "train", {"source_split": "test"}, 3, None),
        ("C - D", "train", "train", {"source_split": "train"}, 2, None),
    ]),
}


@pytest.fixture()
def catalogue(tmp_path):
    db = tmp_path / "catalogue.duckdb"
    excerpt_ids = []
    with Catalogue(db) as cat:
        for source, (licence, tier, tracks) in CONTENT.items():
            cat.upsert_sources([SourceRow(name=source, title=source.upper(), licence=licence, tier=tier,
                                          role="drums", homepage=f"https://example.org/{source}")])
            for track, own, split, meta, n, track_licence in tracks:
                lic = track_licence or licence
                cat.upsert_tracks([TrackRow(source=source, track=track, split=split, licence=lic, duration_s=60.0,
                                            title=f"title {track}", meta_json=json.dumps(meta))])
                cat.upsert_stems([StemRow(source=source, track=track, stem="drums", role="drums", tier=tier,
                                          split=split, licence=lic, path=f"/x/{source}/{track}.wav",
                                          sample_rate=44100, n_channels=1, n_samples=44100 * 60)])
                rows = [ExcerptRow(source, track, "drums", 6.0 * i, 6.0, -20.0) for i in range(n)]
                cat.upsert_excerpts(rows)
                excerpt_ids += [r.id for r in rows]
        # An excerpt nobody trained on, and rejects of a source in the run and of one outside it.
        cat.upsert_excerpts([ExcerptRow("musdb18hq", "C - D", "drums", 54.0, 6.0, -20.0)])
        cat.add_rejects([RejectRow(what="loop", item="a", stage="consolidate", reason="too_short", source="fsl10k"),
                         RejectRow(what="loop", item="b", stage="consolidate", reason="too_short", source="fsl10k"),
                         RejectRow(what="track", item="c", stage="consolidate", reason="no_drums", source="other")])
        # Two shards; one excerpt sits in both (two prompt variants): it counts once.
        a = ShardRow(path="/s/a.tar", split="train", tier="isolated", n_samples=8, n_bytes=1, sha256="0")
        b = ShardRow(path="/s/b.tar", split="train", tier="isolated", n_samples=5, n_bytes=1, sha256="1")
        cat.register_shard(a, excerpt_ids[:8])
        cat.register_shard(b, excerpt_ids[7:])
        cat.start_training_run("mlflow-run-1", ["/s/a.tar", "/s/b.tar"], experiment="tria", name="release_2b")
    return db


def test_card_hours_licences_terms_and_attribution(catalogue):
    card = build_card(catalogue, "release_2b")  # by name; the run id works too
    assert build_card(catalogue, "mlflow-run-1") == card
    # 12 excerpts of 6 s = 72 s = 0.020 h in 2 shards holding 13 samples (one excerpt is in both).
    assert "2 (13 samples); 12 distinct excerpts from 6 tracks, **0.020 h**" in card
    # By source, tier and split, with MUSDB's own test split shown as trained on.
    assert "| musdb18hq | isolated | test -> train | 1 | 3 | 0.005 | 25.0 % |" in card
    assert "| musdb18hq | isolated | train | 1 | 2 | 0.003 | 16.7 % |" in card
    assert "| moisesdb | isolated | train | 1 | 3 | 0.005 | 25.0 % |" in card
    # Rejects of the run's sources only.
    assert "| fsl10k | consolidate | too_short | 2 |" in card and "no_drums" not in card
    # Every licence with its share; the shares are of the hours.
    assert "| CC-BY-NC-SA-4.0 | 0.005 | 25.0 % | yes | yes | yes |" in card
    assert "| CC0-1.0 | 0.002 | 8.3 % | no | no | no |" in card
    assert "| MUSDB18 terms: research use only (mixed per-track licences) | 0.008 | 41.7 % | no | yes | no |" in card
    # Non-commercial terms reach the weights: MoisesDB, the NC loop and MUSDB's research-only terms.
    assert "**Non-commercial / research only**: 75.0 % of the hours" in card
    assert "**Share-alike / copyleft**: CC-BY-NC-SA-4.0" in card
    # Attribution: CC BY loops with their Freesound user and page, MoisesDB's artist; not CC0 nor MUSDB.
    assert '- "title 1001" by beatmaker, https://freesound.org/s/1001/ (CC-BY-3.0)' in card
    assert '- "title 1003" by nc_user, https://freesound.org/s/1003/ (CC-BY-NC-4.0)' in card
    assert '- "title uuid-1" by Band One (CC-BY-NC-SA-4.0)' in card
    assert "zero_user" not in card and '"title A - B"' not in card


def test_cli_prints_the_card_and_names_unknown_runs(catalogue, tmp_path):
    run = [sys.executable, "-m", "pipelines.catalogue", "card", "--db", str(catalogue)]
    out = subprocess.run(run + ["--run", "release_2b"], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("# Dataset card: training run release_2b")
    bad = subprocess.run(run + ["--run", "nope"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "no training run 'nope'" in bad.stderr and "release_2b (mlflow-run-1)" in bad.stderr
    with pytest.raises(CardError, match="no catalogue"):
        build_card(tmp_path / "none.duckdb", "x")


@pytest.mark.parametrize("licence, attribution, nc, sa", [
    ("CC-BY-3.0", True, False, False), ("CC-BY-NC-SA-4.0", True, True, True), ("CC0-1.0", False, False, False),
    ("per-track Creative Commons (Jamendo)", True, False, False), ("research only", False, True, False),
    ("GPL-2.0-or-later", False, False, True), ("CC-BY-SA-3.0", True, False, True)])
def test_licence_terms(licence, attribution, nc, sa):
    assert (needs_attribution(licence), non_commercial(licence), share_alike(licence)) == (attribution, nc, sa)


def test_the_trainer_writes_its_runs_card(tmp_path):
    from shard_fixtures import make_corpus, train_yaml
    from tria.train import main

    make_corpus(tmp_path, {("train", "isolated"): 4, ("val", "isolated"): 2}, T=24)
    assert main([str(train_yaml(tmp_path, "carded")), "num_iters=1", "val_every=0", "ckpt_every=1"]) == 0
    card = (tmp_path / "runs" / "carded" / "dataset_card.md").read_text()
    assert card.startswith("# Dataset card: training run carded") and "`local-carded`" in card
    # make_corpus: 4 train excerpts of 6 s from the source "fixture" under CC0.
    assert "| fixture | isolated | train | 4 | 4 | 0.007 | 100.0 % |" in card and "| CC0 |" in card
