"""Seeded drum grooves as note events, and Hydrogen song patterns as the same events.

A groove is a list of `NoteEvent(time_s, role, velocity)`. Roles are the kit-independent
names of `kits.ROLES` ("kick", "snare", "hat_closed", ...); the renderer maps them onto the
instruments of whatever kit plays the groove.

Each genre is a few one-bar step patterns per voice (16 sixteenth steps, or 12 triplet steps
for the shuffle), written as strings: `X` accent, `x` normal, `g` ghost note, `.` rest. A bar
picks one variant per voice; every `fill_every` bars the second half of the bar becomes a
tom/snare fill and the next downbeat gets a crash. Humanisation jitters velocities and
onsets (a few ms), as a drummer would, so that rhythm features see realistic micro-timing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from pipelines.demo.kits import LEAD_LAG_TICKS, Song, role_of

_LEVELS = {"X": 0.95, "x": 0.75, "g": 0.3}


@dataclasses.dataclass(frozen=True)
class NoteEvent:
    """One drum hit.

    Attributes:
        time_s: onset in seconds from the start of the loop.
        role: groove role (see `kits.ROLES`).
        velocity: 0..1.
        instrument: a preferred instrument name (from a Hydrogen song), tried before the role.
    """

    time_s: float
    role: str
    velocity: float
    instrument: str | None = None


@dataclasses.dataclass(frozen=True)
class Groove:
    """A rendered-to-be drum part: its events and where they came from."""

    genre: str
    bpm: float
    seconds: float
    seed: int
    events: tuple[NoteEvent, ...]

    @property
    def roles(self) -> set[str]:
        """Roles that occur in the groove."""
        return {e.role for e in self.events}


@dataclasses.dataclass(frozen=True)
class GenreStyle:
    """The typical patterns of one genre.

    Attributes:
        bpm_range: tempo range, in quarter notes per minute.
        steps: steps per bar (16 = sixteenths in 4/4, 12 = triplet eighths).
        kick, snare, hat: one-bar variants per voice; the first is the most common.
        hat_role: which instrument keeps time ("hat_closed" or "ride").
        open_hat: one-bar variants of open-hat hits ("" for none).
        swing: delay of the off-beat sixteenths, as a fraction of a step.
        laid_back_ms: how late the snare sits behind the beat.
    """

    bpm_range: tuple[float, float]
    steps: int
    kick: tuple[str, ...]
    snare: tuple[str, ...]
    hat: tuple[str, ...]
    hat_role: str = "hat_closed"
    open_hat: tuple[str, ...] = ("",)
    swing: float = 0.0
    laid_back_ms: float = 0.0


GENRES: dict[str, GenreStyle] = {
    "rock": GenreStyle(
        bpm_range=(92, 140),
        steps=16,
        kick=("x.......x.x.....", "x.....x.x.......", "x.......x...x..."),
        snare=("....X.......X...", "....X.......X..g"),
        hat=("X.x.X.x.X.x.X.x.", "X.x.X.x.X.x.X.xx"),
        open_hat=("", "", "..............x."),
    ),
    "funk": GenreStyle(
        bpm_range=(90, 112),
        steps=16,
        kick=("x..x..x...x..x..", "x.x...x...x..x..", "x..x......xx...."),
        snare=("....X..g.g..X..g", "....X.g..g..X.g.", "....X..g....X..."),
        hat=("XxxxXxxxXxxxXxxx", "Xxx.XxxxXxx.Xxxx"),
        open_hat=("", "......x.......x."),
        swing=0.08,
    ),
    "hiphop": GenreStyle(
        bpm_range=(80, 98),
        steps=16,
        kick=("x.....x...x.....", "x..x......x..x..", "x.x.......x....."),
        snare=("....X.......X...", "....X.......X..g"),
        hat=("x.x.x.x.x.x.x.x.", "x.xxx.x.x.xxx.x."),
        swing=0.2,
        laid_back_ms=12.0,
    ),
    "house": GenreStyle(
        bpm_range=(118, 128),
        steps=16,
        kick=("X...X...X...X...",),
        snare=("....X.......X...", "....X.......X..x"),
        hat=("x.x.x.x.x.x.x.x.", "xxxxxxxxxxxxxxxx"),
        open_hat=("..x...x...x...x.",),
    ),
    "halftime": GenreStyle(
        bpm_range=(130, 160),
        steps=16,
        kick=("x.........x.....", "x.x.......x..x..", "x......x..x....."),
        snare=("........X.......", "........X.....g."),
        hat=("x.x.x.x.x.x.x.x.", "x.xxx.x.x.xxx.x."),
        hat_role="hat_closed",
    ),
    "shuffle": GenreStyle(
        bpm_range=(88, 128),
        steps=12,  # triplet eighths: the hat plays the first and third of each triplet
        kick=("x.....x.....", "x....xx.....", "x.....x..x.."),
        snare=("...X.....X..", "...X.....X.g"),
        hat=("X.xx.xX.xx.x",),
        hat_role="ride",
        open_hat=("",),
    ),
}


def _check(genre: str, seconds: float, bpm: float | None) -> GenreStyle:
    if genre not in GENRES:
        raise ValueError(f"unknown genre {genre!r}; expected one of {sorted(GENRES)}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if bpm is not None and not 20 <= bpm <= 400:
        raise ValueError(f"bpm must be in [20, 400], got {bpm}")
    return GENRES[genre]


def _bar_hits(style: GenreStyle, rng: np.random.Generator) -> list[tuple[int, str, float]]:
    """(step, role, velocity) of one normal bar, one variant per voice (the first most often)."""

    def pick(variants: tuple[str, ...]) -> str:
        return (
            variants[0]
            if rng.random() < 0.6 or len(variants) == 1
            else variants[rng.integers(1, len(variants))]
        )

    hits = []
    opens = pick(style.open_hat)
    for role, pattern in (
        ("kick", pick(style.kick)),
        ("snare", pick(style.snare)),
        (style.hat_role, pick(style.hat)),
    ):
        for step, ch in enumerate(pattern):
            if ch == "." or (role == style.hat_role and step < len(opens) and opens[step] != "."):
                continue  # an open hat replaces the closed one on that step
            hits.append((step, role, _LEVELS[ch]))
    hits += [(step, "hat_open", 0.7) for step, ch in enumerate(opens) if ch != "."]
    return hits


def _fill_hits(style: GenreStyle, rng: np.random.Generator) -> list[tuple[int, str, float]]:
    """A fill over the second half of a bar: snare roll, descending toms, or a mix."""
    half = style.steps // 2
    kind = rng.choice(["toms", "snare", "mixed"])
    toms = ["tom_high", "tom_high", "tom_mid", "tom_mid", "tom_low", "tom_low", "tom_low", "tom_low"]
    stride = int(rng.choice([1, 2])) if style.steps == 16 else 1  # sixteenths or eighths
    hits = []
    steps = list(range(half, style.steps, stride))
    for k, step in enumerate(steps):
        frac = k / max(len(steps) - 1, 1)
        if kind == "snare":
            role = "snare"
        elif kind == "toms":
            role = toms[min(int(frac * len(toms)), len(toms) - 1)]
        else:
            role = "snare" if k % 2 == 0 else toms[min(int(frac * len(toms)), len(toms) - 1)]
        hits.append((step, role, 0.55 + 0.4 * frac))  # crescendo into the next bar
    return hits


def generate_groove(
    genre: str,
    seconds: float,
    seed: int = 0,
    bpm: float | None = None,
    fill_every: int = 4,
    humanize_ms: float = 6.0,
    velocity_jitter: float = 0.06,
) -> Groove:
    """A seeded drum groove of one genre.

    Args:
        genre: one of `GENRES` (rock, funk, hiphop, house, halftime, shuffle).
        seconds: length; events at or after it are dropped.
        seed: same seed, same groove.
        bpm: tempo; None draws one from the genre's range.
        fill_every: a fill ends every this many bars (0: no fills).
        humanize_ms: standard deviation of onset jitter (clipped to 3 sigma).
        velocity_jitter: standard deviation of velocity jitter.

    Returns:
        The groove, events sorted by time, every velocity in [0.05, 1].
    """
    style = _check(genre, seconds, bpm)
    rng = np.random.default_rng(seed)
    bpm = float(bpm) if bpm is not None else float(np.round(rng.uniform(*style.bpm_range)))
    step_s = 60.0 / bpm * 4 / style.steps
    bar_s = step_s * style.steps
    n_bars = int(np.ceil(seconds / bar_s))
    events: list[NoteEvent] = []
    for bar in range(n_bars):
        hits = _bar_hits(style, rng)
        if fill_every and (bar + 1) % fill_every == 0:
            half = style.steps // 2
            keep = [h for h in hits if h[0] < half or (h[1] == "kick" and h[0] == half)]
            hits = keep + _fill_hits(style, rng)
        if fill_every and bar > 0 and bar % fill_every == 0:
            hits.append((0, "crash", 0.9))
        for step, role, vel in hits:
            swing = style.swing * step_s if style.steps == 16 and step % 2 == 1 else 0.0
            late = style.laid_back_ms / 1000 if role == "snare" else 0.0
            jitter = float(np.clip(rng.normal(0, humanize_ms), -3 * humanize_ms, 3 * humanize_ms)) / 1000
            # A hit pushed before 0 by the jitter stays at 0: the loop must start on its downbeat.
            t = max(bar * bar_s + step * step_s + swing + late + jitter, 0.0)
            v = float(np.clip(vel + rng.normal(0, velocity_jitter), 0.05, 1.0))
            if t < seconds:
                events.append(NoteEvent(t, role, v))
    events.sort(key=lambda e: (e.time_s, e.role))
    return Groove(genre=genre, bpm=bpm, seconds=float(seconds), seed=seed, events=tuple(events))


def song_groove(
    song: Song,
    seconds: float,
    start_group: int = 0,
    bpm: float | None = None,
    seed: int = 0,
) -> Groove:
    """A Hydrogen song's pattern sequence as a groove, looped until `seconds` are filled.

    Hydrogen plays all patterns of a sequence group at once; a group lasts as long as its
    longest pattern. Notes move by their lead/lag (up to 5 ticks). Instruments whose names
    map to no role are dropped; the song's instrument name rides along in `NoteEvent`.

    Args:
        song: a parsed `.h2song`.
        seconds: length of the groove.
        start_group: first sequence group to play (wraps around).
        bpm: tempo; None keeps the song's.
        seed: recorded in the groove (the song itself is not random).

    Raises:
        ValueError: the song has no notes.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    groups = [g for g in song.sequence if g] or [(p.name,) for p in song.patterns]
    by_name = {p.name: p for p in song.patterns}
    groups = [[by_name[n] for n in g if n in by_name] for g in groups]
    groups = [g for g in groups if g]
    if not any(p.notes for g in groups for p in g):
        raise ValueError(f"song {song.name!r} has no notes")
    bpm = float(bpm or song.bpm)
    tick_s = 60.0 / (bpm * song.resolution)
    events, tick, k = [], 0, start_group
    while tick * tick_s < seconds:
        group = groups[k % len(groups)]
        for pattern in group:
            for note in pattern.notes:
                name = song.instruments.get(note.instrument, "")
                role = role_of(name)
                t = (tick + note.position + note.lead_lag * LEAD_LAG_TICKS) * tick_s
                if role is not None and 0.0 <= t < seconds and note.velocity > 0:
                    events.append(NoteEvent(t, role, note.velocity, instrument=name))
        tick += max(p.size for p in group)
        k += 1
    events.sort(key=lambda e: (e.time_s, e.role))
    return Groove(
        genre=f"h2song:{song.name}", bpm=bpm, seconds=float(seconds), seed=seed, events=tuple(events)
    )


def onset_times(events: Iterable[NoteEvent], role: str | None = None) -> np.ndarray:
    """Sorted onset times (s) of the events, optionally of one role only. Shape (E,)."""
    return np.sort(np.array([e.time_s for e in events if role is None or e.role == role], dtype=float))


__all__ = ["GENRES", "GenreStyle", "Groove", "NoteEvent", "generate_groove", "onset_times", "song_groove"]
