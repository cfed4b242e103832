"""The demo's SIMULATED separated tier: the artefacts are there, and the rows say it is simulated."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from pipelines.demo.separation import SR, SeparationArtefacts, accompaniment, simulate_separation
from pipelines.rows import stable_id
from pipelines.sources import source_class
from pipelines.sources.hydrogen import Hydrogen
from pipelines.sources.hydrogen_simsep import HydrogenSimSeparated


def _clicks(n: int, every_s: float = 0.5) -> np.ndarray:
    """Bright hits: 3 ms noise bursts, every ``every_s`` seconds, from 0.25 s."""
    rng = np.random.default_rng(0)
    x = np.zeros(n)
    for start in np.arange(0.25, n / SR - 0.1, every_s):
        a = int(start * SR)
        x[a:a + 132] = rng.uniform(-0.8, 0.8, 132) * np.exp(-np.arange(132) / 40)
    return x


def _band_share(x: np.ndarray, lo: float) -> float:
    f, p = signal.welch(x, SR, nperseg=4096)
    return float(p[f >= lo].sum() / p.sum())


@pytest.fixture(scope="module")
def separated():
    n = 2 * SR
    drums = _clicks(n)[:, None]
    music = accompaniment(n, 120.0, np.random.default_rng(1))
    est, mix = simulate_separation(drums, music, SeparationArtefacts(), np.random.default_rng(2))
    clean, _ = simulate_separation(drums, music, SeparationArtefacts(bleed=0.0, smear_ms=0.0, high_atten_db=0.0,
                                                                     jitter=0.0), np.random.default_rng(2))
    return drums[:, 0], music, est[:, 0], mix[:, 0], clean[:, 0]


def test_music_is_tonal_and_at_tempo():
    music = accompaniment(SR * 2, 120.0, np.random.default_rng(0))
    assert music.shape == (SR * 2,) and np.abs(music).max() > 0.1
    assert _band_share(music, 2000) < 0.1  # bass, chords, arpeggio: little energy up high
    assert not np.array_equal(music, accompaniment(SR * 2, 120.0, np.random.default_rng(1)))


def test_bleed_leaves_music_between_the_hits(separated):
    drums, music, est, mix, clean = separated
    quiet = slice(int(0.45 * SR), int(0.7 * SR))  # between two hits: only music in the mix
    assert np.sqrt(np.mean(est[quiet] ** 2)) > 0.08 * np.sqrt(np.mean(mix[quiet] ** 2))
    assert np.sqrt(np.mean(est[quiet] ** 2)) > 3 * np.sqrt(np.mean(clean[quiet] ** 2))


def test_highs_are_dulled(separated):
    drums, music, est, mix, clean = separated
    assert _band_share(est, 10_000) < 0.5 * _band_share(clean, 10_000)


def test_transients_get_a_pre_echo():
    n = 2 * SR
    drums = _clicks(n)[:, None]
    music = accompaniment(n, 120.0, np.random.default_rng(1))
    quiet = dict(music_db=-30.0, bleed=0.0, jitter=0.0)  # the smearing alone
    smeared, _ = simulate_separation(drums, music, SeparationArtefacts(**quiet), np.random.default_rng(2))
    sharp, _ = simulate_separation(drums, music, SeparationArtefacts(smear_ms=0.0, **quiet), np.random.default_rng(2))
    hit = int(0.75 * SR)
    before = slice(hit - int(0.03 * SR), hit - int(0.01 * SR))  # 30 to 10 ms before a hit
    rms = lambda x: float(np.sqrt(np.mean(x[before] ** 2)))  # noqa: E731
    assert rms(smeared) > 5 * rms(sharp)


def test_same_seed_same_audio():
    n = SR
    drums = _clicks(n)[:, None]
    music = accompaniment(n, 100.0, np.random.default_rng(5))
    a, _ = simulate_separation(drums, music, SeparationArtefacts(), np.random.default_rng(7))
    b, _ = simulate_separation(drums, music, SeparationArtefacts(), np.random.default_rng(7))
    assert np.array_equal(a, b) and a.shape == (n, 1) and np.abs(a).max() <= 0.95 + 1e-6


def test_source_rows_are_separated_labelled_simulated_and_keep_the_split(tmp_path):
    assert source_class("hydrogen_simsep") is HydrogenSimSeparated
    hydrogen = Hydrogen(n_loops=6, seconds_per_loop=1.0, n_gestures=1, use_apt=False, seed=3)
    hydrogen.fetch(tmp_path / "raw" / "hydrogen")
    original = {s.track: s for s in hydrogen.consolidate(tmp_path / "raw" / "hydrogen", tmp_path / "stems_h").stems}
    source = HydrogenSimSeparated(n_loops=3)
    raw = source.fetch(tmp_path / "raw" / "hydrogen_simsep")
    assert len(raw) == 3 and all(r.name.startswith("loops/") for r in raw)
    out = source.consolidate(tmp_path / "raw" / "hydrogen_simsep", tmp_path / "stems")
    assert len(out.stems) == len(out.tracks) == 3
    assert source.info.tier == "separated" and "SIMULATED" in source.info.title
    for stem, track in zip(out.stems, out.tracks):
        parent = original[stem.track.removeprefix("simsep/")]
        assert stem.tier == "separated" and stem.licence.endswith("SIMULATED separation")
        assert track.title.startswith("SIMULATED") and '"simulated":true' in track.meta_json
        assert stem.split == parent.split and stem.parent_stem_id == parent.id == stable_id("hydrogen", parent.track,
                                                                                           "drums")
        est, _ = sf.read(stem.path)
        ref, _ = sf.read(parent.path)
        assert est.shape == ref.shape and not np.allclose(est, ref, atol=1e-3)
    assert source.fetch(tmp_path / "raw" / "hydrogen_simsep") == raw  # cached: same files, same digests
    with pytest.raises(ValueError, match="unknown options"):
        HydrogenSimSeparated(n_loop=3)
