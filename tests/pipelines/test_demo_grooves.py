"""Seeded groove generator and Hydrogen song patterns as note events."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.demo import grooves
from pipelines.demo.kits import ROLES, Song, SongNote, SongPattern


@pytest.mark.parametrize("genre", sorted(grooves.GENRES))
def test_same_seed_same_groove_and_within_bounds(genre):
    a = grooves.generate_groove(genre, 6.0, seed=11)
    b = grooves.generate_groove(genre, 6.0, seed=11)
    c = grooves.generate_groove(genre, 6.0, seed=12)
    assert a == b and a != c
    lo, hi = grooves.GENRES[genre].bpm_range
    assert lo <= a.bpm <= hi
    times = np.array([e.time_s for e in a.events])
    assert times.min() >= 0 and times.max() < 6.0 and np.all(np.diff(times) >= 0)
    assert all(0.05 <= e.velocity <= 1.0 and e.role in ROLES for e in a.events)
    assert {"kick", "snare"} <= a.roles and a.roles & {"hat_closed", "ride"}


def test_tempo_sets_the_grid():
    # No humanisation: accented snare backbeats of 4/4 rock fall on beats 2 and 4 exactly.
    g = grooves.generate_groove(
        "rock", 8.0, seed=0, bpm=120, humanize_ms=0.0, fill_every=0, velocity_jitter=0
    )
    snares = grooves.onset_times([e for e in g.events if e.velocity > 0.5], "snare")  # not ghost notes
    assert np.allclose(snares, np.arange(len(snares)) + 0.5)  # 120 bpm: one backbeat per second
    kicks = grooves.onset_times(g.events, "kick")
    assert np.allclose(kicks[kicks % 2.0 < 1e-9], np.arange(0, 8, 2.0))  # every bar starts with a kick
    slower = grooves.generate_groove("rock", 8.0, seed=0, bpm=60, humanize_ms=0.0, fill_every=0)
    assert np.allclose(grooves.onset_times(slower.events, "snare")[:2], [1.0, 3.0])


def test_humanisation_is_small_and_fills_add_toms_and_crash():
    g = grooves.generate_groove("funk", 10.0, seed=3, bpm=100, humanize_ms=5.0, fill_every=2)
    step = 60 / 100 / 4
    swing = grooves.GENRES["funk"].swing * step
    off = [(e.time_s - swing * (round(e.time_s / step) % 2)) % step for e in g.events if e.time_s > 0]
    off = np.minimum(off, step - np.array(off))
    assert np.max(off) <= 0.02  # at most 3 sigma (15 ms) plus the swing rounding
    bar = 4 * 60 / 100
    for fill_bar in (1, 3):  # every 2nd bar ends with a fill: snare/toms only in its 2nd half
        half = [e for e in g.events if (fill_bar + 0.55) * bar <= e.time_s < (fill_bar + 0.98) * bar]
        assert len(half) >= 4 and {e.role for e in half} <= {"snare", "tom_high", "tom_mid", "tom_low"}
    crash = grooves.onset_times(g.events, "crash")
    assert len(crash) == 2  # on the downbeats after each fill (bars 2 and 4)
    assert np.allclose(crash / bar, np.round(crash / bar), atol=0.02)  # crashes on downbeats


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown genre"):
        grooves.generate_groove("polka", 4.0)
    with pytest.raises(ValueError, match="seconds must be > 0"):
        grooves.generate_groove("rock", 0)
    with pytest.raises(ValueError, match="bpm must be in"):
        grooves.generate_groove("rock", 4.0, bpm=1000)


def _song() -> Song:
    a = SongPattern(
        "A", 192, (SongNote(0, 0.8, 0), SongNote(96, 0.7, 1, lead_lag=-1.0), SongNote(48, 0.5, 9))
    )
    b = SongPattern("B", 96, (SongNote(0, 1.0, 0),))
    return Song("tiny", 120.0, 48, {0: "Kick", 1: "Snare", 9: "Zap FX"}, "Kit", (a, b), (("A",), ("A", "B")))


def test_song_groove_times_and_roles():
    g = grooves.song_groove(_song(), seconds=4.5)
    tick = 60 / (120 * 48)  # 120 bpm, 48 ticks per quarter
    expected = [
        (0.0, "kick"), ((96 - 5) * tick, "snare"),  # lead/lag -1: five ticks early
        (192 * tick, "kick"), (192 * tick, "kick"), ((192 + 91) * tick, "snare"),  # A and B together
        (384 * tick, "kick"),  # the sequence loops: A again; its snare falls after 4.5 s
    ]  # fmt: skip
    got = [(round(e.time_s, 9), e.role) for e in g.events]
    assert got == [(round(t, 9), r) for t, r in sorted(expected)]
    assert all(e.instrument in ("Kick", "Snare") for e in g.events)  # "Zap FX" has no role
    assert g.genre == "h2song:tiny" and g.bpm == 120.0
    assert max(e.time_s for e in g.events) < 4.5
    later = grooves.song_groove(_song(), seconds=2.0, start_group=1, bpm=60)
    assert later.bpm == 60 and grooves.onset_times(later.events, "kick")[:2].tolist() == [0.0, 0.0]


def test_song_without_notes():
    empty = Song("e", 100.0, 48, {}, None, (SongPattern("A", 192, ()),), ())
    with pytest.raises(ValueError, match="no notes"):
        grooves.song_groove(empty, 2.0)
