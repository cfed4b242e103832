"""The `hydrogen` catalogue source over a tiny procedural demo corpus."""

from __future__ import annotations

import pytest

from pipelines.rows import StemRow, TrackRow
from pipelines.sources import get_source, source_class
from pipelines.sources.hydrogen import Hydrogen, assign_splits


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    root = tmp_path_factory.mktemp("hydrogen")
    source = Hydrogen(n_loops=4, seconds_per_loop=1.0, n_gestures=1, use_apt=False, seed=3)
    raw = source.fetch(root / "raw")
    return source, root, raw


def test_registry_knows_the_adapter():
    assert source_class("hydrogen") is Hydrogen
    info = Hydrogen.info
    assert (info.name, info.tier, info.role) == ("hydrogen", "synthetic", "drums")
    src = get_source("hydrogen", config="/nonexistent.yaml", n_loops=2, use_apt=False)
    assert src.n_loops == 2 and src.use_apt is False
    with pytest.raises(ValueError, match="unknown options"):
        Hydrogen(n_loop=3)


def test_fetch_lists_loops_as_raw_files(fetched):
    source, root, raw = fetched
    assert len(raw) == 4  # the gesture is not a raw drum file
    assert all(r.source == "hydrogen" and r.name.startswith("loops/") and len(r.sha256) == 64 for r in raw)
    assert all((root / "raw" / "demo" / r.name).stat().st_size == r.size for r in raw)
    assert source.fetch(root / "raw") == raw  # cached corpus: same rows


def test_consolidate_one_drum_stem_per_loop(fetched, tmp_path):
    source, root, raw = fetched
    out = source.consolidate(root / "raw", tmp_path / "stems")
    assert len(out.tracks) == len(out.stems) == 4 and out.rejects == ()
    raw_ids = {r.id for r in raw}
    for track, stem in zip(out.tracks, out.stems):
        assert isinstance(track, TrackRow) and isinstance(stem, StemRow)
        assert stem.track == track.track and stem.split == track.split
        assert (stem.stem, stem.role, stem.tier) == ("drums", "drums", "synthetic")
        assert stem.licence == track.licence == "CC0 (procedural)"
        assert (stem.sample_rate, stem.n_channels, stem.n_samples) == (44100, 2, 44100)
        assert set(stem.raw_ids) <= raw_ids and len(stem.raw_ids) == 1
        assert stem.path.endswith("drums.wav") and f"/{stem.split}/" in stem.path
    assert "val" in {s.split for s in out.stems}  # the demo always has something to validate on
    again = source.consolidate(root / "raw", tmp_path / "stems")
    assert again == out  # deterministic splits and ids


def test_assign_splits_guarantees_val_and_is_stable():
    keys = [f"kit/{i:03d}" for i in range(40)]
    splits = assign_splits(keys)
    assert splits == assign_splits(list(reversed(keys)))  # independent of order
    assert set(splits.values()) <= {"train", "val", "test"}
    assert 20 <= sum(v == "train" for v in splits.values()) <= 38
    for n in range(2, 6):  # small corpora: a val item always, taken from the largest split
        few = assign_splits(keys[:n])
        assert "val" in few.values()
        assert sum(v == "val" for v in few.values()) >= 1
    assert assign_splits(["only"]) in ({"only": "train"}, {"only": "val"}, {"only": "test"})
    # Adding keys never moves an existing one (unless it was the val stand-in).
    big = assign_splits(keys + [f"kit/{i:03d}" for i in range(40, 60)])
    assert sum(big[k] != splits[k] for k in keys) <= 1
