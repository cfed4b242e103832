"""Download + consolidate of every source into a catalogue, twice: same rows, nothing fetched again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.catalogue import Catalogue
from pipelines.sources import ADAPTERS, get_source, ingest, list_sources, load_registry

QUIET = {"progress": False, "retries": 1, "backoff_s": 0.01}
REPO = Path(__file__).resolve().parents[3]


def _remote(server, name, data, **kw):
    return {"url": server.add(name, data), "filename": name, "size": len(data), **kw}


def _configure(name: str, server, corpora, tmp_path: Path):
    """The source `name` pointed at fixture data: archives on the HTTP server or a local location."""
    if name == "musdb18hq":
        return get_source(name, files=[_remote(server, "musdb18hq.zip", corpora.musdb_zip())])
    if name == "fsl10k":
        return get_source(name, files=[_remote(server, "FSL10K.zip", corpora.fsl_zip())])
    if name == "mtg_jamendo":
        tsv, tar = corpora.jamendo_files()
        return get_source(name, parts=[], files=[_remote(server, "raw_30s_cleantags.tsv", tsv, extract=False),
                                                 _remote(server, "raw_30s_audio-00.tar", tar)])
    if name in ("rir", "noise"):
        return get_source(name, files=[_remote(server, "rirs_noises.zip", corpora.rirs_noises_zip())])
    if name == "moisesdb":
        archive = tmp_path / "user" / "moisesdb.zip"
        archive.parent.mkdir()
        archive.write_bytes(corpora.make_zip(corpora.moises_members()))
        return get_source(name, location=archive, sha256=corpora.sha256(archive.read_bytes()))
    if name == "local_folder":
        return get_source(name, location=corpora.local_folder(tmp_path / "user"))
    if name == "hydrogen":  # procedural kits only: no apt, no network
        return get_source(name, n_loops=2, seconds_per_loop=1.0, n_gestures=1, use_apt=False, seed=3)
    if name == "hydrogen_simsep":  # over a tiny procedural demo corpus
        from pipelines.demo.build import build_demo_corpus

        build_demo_corpus(tmp_path / "demo", n_loops=2, seconds_per_loop=1.0, n_gestures=1, use_apt=False,
                                   seed=3)
        return get_source(name, location=tmp_path / "demo", n_loops=2)
    raise AssertionError(name)


def _snapshot(cat: Catalogue) -> dict[str, list[tuple]]:
    """Every table's rows, without the first-write timestamps, sorted."""
    out = {}
    for table in cat.tables():
        result = cat.execute(f"SELECT * FROM {table}")
        keep = [i for i, c in enumerate(result.columns) if not c.endswith("_at")]
        out[table] = sorted((tuple(str(r[i]) for i in keep) for r in result.rows))
    return out


TESTED = ["musdb18hq", "moisesdb", "fsl10k", "mtg_jamendo", "rir", "noise", "local_folder", "hydrogen",
          "hydrogen_simsep"]


def test_every_registered_source_is_tested_here():
    assert sorted(TESTED) == sorted(ADAPTERS) == list_sources()


@pytest.mark.parametrize("name", TESTED)
def test_ingest_twice_is_idempotent(name, corpus_server, corpora, tmp_path):
    source = _configure(name, corpus_server, corpora, tmp_path)
    with Catalogue(tmp_path / "catalogue.duckdb") as cat:
        first = ingest(source, tmp_path / "data", cat, **QUIET)
        before = _snapshot(cat)
        served = sum(corpus_server.sent.values())
        corpus_server.reset_counts()

        second = ingest(source, tmp_path / "data", cat, **QUIET)
        after = _snapshot(cat)

    assert corpus_server.requests == [] and sum(corpus_server.sent.values()) == 0
    assert served == sum(len(d) for d in corpus_server.files.values())  # each file fetched exactly once
    # (hydrogen renders its corpus locally: nothing is served, and nothing must be rebuilt either)
    assert after == before
    assert second.consolidated == first.consolidated
    # The rows landed: one source row, and as many raw files / stems / rejects as the adapter returned.
    assert len(before["sources"]) == 1
    assert len(before["raw_files"]) == len(first.raw_files) > 0
    assert len(before["stems"]) == len(first.consolidated.stems) > 0
    assert len(before["tracks"]) == len(first.consolidated.tracks)
    assert len(before["rejects"]) == len(first.consolidated.rejects)
    # Every stem's file exists and every stem traces back to a raw file row.
    raw_ids = {r.id for r in first.raw_files}
    for stem in first.consolidated.stems:
        assert Path(stem.path).is_file() and stem.sha256
        assert set(stem.raw_ids) <= raw_ids


def test_registry_file_is_safe_yaml_for_known_sources():
    entries = load_registry(REPO / "conf" / "sources.yaml")
    assert set(entries) == set(ADAPTERS)
    assert entries["musdb18hq"]["files"][0]["md5"] == "12d4f2ecd55245a4688754dd76363103"
    # MoisesDB's published digests are the adapter's, for a file named moisesdb.zip.
    [published] = get_source("moisesdb").files
    assert (published.filename, published.sha256, published.md5) == (
        "moisesdb.zip", "4cde33ce416ac7c868cffcb60eb31f5c741ab7ae5601cbb9d99ed498b72c48c1",
        "13cf74eda129c38b914a51ea79fb1778")


def test_unknown_source_in_registry_is_refused(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("sources:\n  napster: {}\n")
    with pytest.raises(ValueError, match="unknown sources"):
        load_registry(bad)
    with pytest.raises(KeyError, match="unknown source 'napster'"):
        get_source("napster")


def test_list_cli_shows_counts_from_the_catalogue(corpus_server, corpora, tmp_path):
    db = tmp_path / "catalogue.duckdb"
    with Catalogue(db) as cat:
        ingest(_configure("fsl10k", corpus_server, corpora, tmp_path), tmp_path / "data", cat, **QUIET)
    out = subprocess.run([sys.executable, "-m", "pipelines.sources", "list", "--db", str(db)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:-1]}
    assert set(lines) == set(ADAPTERS)
    # fsl10k: 1 raw file (the zip), 2 kept loops of 5 s and 4.5 s.
    assert lines["fsl10k"][-3:] == ["1", "2", "0.0026"]
    assert "separated" in lines["mtg_jamendo"] and "CC-BY-NC-SA-4.0" in lines["moisesdb"]
