"""Procedural drum kits: the fallback when Debian's Hydrogen kits cannot be fetched.

Every sound is built from a few physical-ish parts: pitch-swept sines (kick, toms),
resonators (two-pole peaks) excited by noise or an impulse (snare shell, rims, woodblocks),
band-limited noise (snare wires, cymbals) and inharmonic square-wave clusters (the TR-808's
metallic hats and cymbals), each under an exponential envelope. Each instrument gets several
velocity layers; a harder hit is brighter, not just louder, as in a sampled kit.

The kits are `kits.Kit` objects whose layers hold their audio in memory, so the renderer
treats them exactly like real kits. Licence: CC0 (they are generated here).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
from scipy.signal import butter, iirpeak, lfilter, sosfilt

from pipelines.demo.kits import SAMPLE_RATE, Instrument, Kit, Layer

PROCEDURAL_LICENCE = "CC0 (procedural)"
SR = SAMPLE_RATE

# Ratios of the six square oscillators of the TR-808 cymbal/hat circuit (Hz at base 1.0).
_METAL_HZ = (205.3, 304.4, 369.6, 522.7, 540.0, 800.0)


@dataclasses.dataclass(frozen=True)
class KitVoicing:
    """Tuning of a procedural kit.

    Attributes:
        name: kit name.
        kick_hz: (start, end) of the kick's pitch sweep.
        kick_decay_s: kick body decay time constant.
        snare_hz: the two shell modes of the snare.
        wire_mix: snare-wire noise level against the shell (0..1).
        tom_hz: (high, mid, low) tom pitches.
        hat_base: multiplier on the metallic oscillator set.
        cymbal_decay_s: crash decay time constant.
        decay_scale: all decays multiplied by this (tight vs roomy kits).
    """

    name: str
    kick_hz: tuple[float, float] = (140.0, 52.0)
    kick_decay_s: float = 0.18
    snare_hz: tuple[float, float] = (185.0, 330.0)
    wire_mix: float = 0.7
    tom_hz: tuple[float, float, float] = (190.0, 140.0, 98.0)
    hat_base: float = 1.0
    cymbal_decay_s: float = 0.9
    decay_scale: float = 1.0


VOICINGS: dict[str, KitVoicing] = {
    "acoustic": KitVoicing("procedural-acoustic"),
    "electronic": KitVoicing(
        "procedural-electronic", kick_hz=(110.0, 45.0), kick_decay_s=0.45, snare_hz=(210.0, 360.0),
        wire_mix=0.85, tom_hz=(220.0, 160.0, 110.0), hat_base=1.3, cymbal_decay_s=0.7,
    ),
    "tight": KitVoicing(
        "procedural-tight", kick_hz=(180.0, 65.0), kick_decay_s=0.1, snare_hz=(240.0, 420.0),
        wire_mix=0.55, tom_hz=(260.0, 200.0, 150.0), hat_base=1.1, cymbal_decay_s=0.5, decay_scale=0.6,
    ),
}  # fmt: skip


# --------------------------------------------------------------------------- building blocks


def _t(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SR)) / SR


def envelope(seconds: float, decay_s: float, attack_s: float = 0.0005) -> np.ndarray:
    """Linear attack then exponential decay with time constant `decay_s`. Shape (N,)."""
    t = _t(seconds)
    return np.minimum(t / attack_s, 1.0) * np.exp(-t / decay_s)


def bandpass(x: np.ndarray, lo: float, hi: float, order: int = 2) -> np.ndarray:
    """Butterworth band-pass between `lo` and `hi` Hz (clamped below Nyquist)."""
    hi = min(hi, 0.45 * SR)
    return sosfilt(butter(order, [lo, hi], btype="band", fs=SR, output="sos"), x)


def highpass(x: np.ndarray, cutoff: float, order: int = 2) -> np.ndarray:
    """Butterworth high-pass."""
    return sosfilt(butter(order, cutoff, btype="high", fs=SR, output="sos"), x)


def lowpass(x: np.ndarray, cutoff: float, order: int = 2) -> np.ndarray:
    """Butterworth low-pass."""
    return sosfilt(butter(order, min(cutoff, 0.45 * SR), btype="low", fs=SR, output="sos"), x)


def resonator(x: np.ndarray, freq: float, q: float) -> np.ndarray:
    """A two-pole resonance at `freq` Hz with quality `q` (higher rings longer)."""
    b, a = iirpeak(freq, q, fs=SR)
    return lfilter(b, a, x)


def swept_sine(seconds: float, f_start: float, f_end: float, sweep_s: float) -> np.ndarray:
    """Sine whose frequency falls exponentially from `f_start` to `f_end`. Shape (N,)."""
    t = _t(seconds)
    freq = f_end + (f_start - f_end) * np.exp(-t / sweep_s)
    return np.sin(2 * np.pi * np.cumsum(freq) / SR)


def metallic(seconds: float, base: float, rng: np.random.Generator) -> np.ndarray:
    """The 808 cymbal source: six detuned square waves summed. Shape (N,)."""
    t = _t(seconds)
    phases = rng.uniform(0, 1, len(_METAL_HZ))
    return sum(np.sign(np.sin(2 * np.pi * (f * base * t + p))) for f, p in zip(_METAL_HZ, phases)) / 6


def _norm(x: np.ndarray, peak: float) -> np.ndarray:
    m = float(np.max(np.abs(x)))
    return x * (peak / m) if m > 0 else x


# --------------------------------------------------------------------------- instruments
# Each takes (hardness in (0, 1], voicing, rng) and returns mono float64 audio. Hardness
# brightens the sound: more click, wider noise band, faster pitch drop.


def kick(h: float, v: KitVoicing, rng: np.random.Generator) -> np.ndarray:
    dur = 0.25 + 3 * v.kick_decay_s * v.decay_scale
    f0, f1 = v.kick_hz
    body = swept_sine(dur, f0 * (0.85 + 0.3 * h), f1, 0.03 + 0.02 * (1 - h))
    body *= envelope(dur, v.kick_decay_s * v.decay_scale, 0.001)
    click = highpass(rng.standard_normal(len(body)), 1500 + 2500 * h) * envelope(dur, 0.002 + 0.002 * h)
    return lowpass(body + (0.05 + 0.2 * h) * click, 2000 + 4000 * h)


def snare(h: float, v: KitVoicing, rng: np.random.Generator) -> np.ndarray:
    dur = 0.45 * v.decay_scale + 0.1
    shell = sum(swept_sine(dur, f * 1.15, f, 0.01) * w for f, w in zip(v.snare_hz, (1.0, 0.5)))
    shell = shell * envelope(dur, 0.05 * v.decay_scale)
    wires = bandpass(rng.standard_normal(len(shell)), 900 + 600 * h, 5000 + 7000 * h, order=2)
    wires = _norm(wires, 1.0) * envelope(dur, (0.09 + 0.05 * h) * v.decay_scale)
    return (1 - v.wire_mix) * shell + v.wire_mix * (0.6 + 0.4 * h) * wires


def rim(h: float, v: KitVoicing, rng: np.random.Generator) -> np.ndarray:
    impulse = np.zeros(int(0.12 * SR))
    impulse[0] = 1.0
    ping = _norm(resonator(impulse, 1700 + 300 * h, 18) + 0.6 * resonator(impulse, 480, 10), 1.0)
    tick = highpass(rng.standard_normal(len(impulse)), 3000) * envelope(0.12, 0.003)
    return ping * envelope(0.12, 0.02) + 0.1 * h * tick


def clap(h: float, v: KitVoicing, rng: np.random.Generator) -> np.ndarray:
    dur = 0.35
    noise = bandpass(rng.standard_normal(int(dur * SR)), 800 + 400 * h, 2600 + 2000 * h)
    env = 0.7 * envelope(dur, 0.09)
    for k in range(3):  # a clap is several hands: short bursts ~10 ms apart before the tail
        start = int((k * 0.011 + rng.uniform(0, 0.002)) * SR)
        burst = envelope(dur, 0.004)
        env[start:] += burst[: len(env) - start]
    return noise * env


def hat(h: float, v: KitVoicing, rng: np.random.Generator, decay_s: float) -> np.ndarray:
    dur = min(6 * decay_s * v.decay_scale + 0.02, 2.0)
    source = 0.6 * metallic(dur, v.hat_base, rng) + 0.4 * rng.standard_normal(int(dur * SR))
    bright = highpass(bandpass(source, 5000, 9000 + 6000 * h, order=2), 5500)  # harder: more top end
    return bright * envelope(dur, decay_s * v.decay_scale, 0.0003)


def tom(h: float, v: KitVoicing, rng: np.random.Generator, hz: float) -> np.ndarray:
    dur = 0.6 * v.decay_scale + 0.15
    body = swept_sine(dur, hz * (1.25 + 0.25 * h), hz, 0.03) * envelope(dur, 0.18 * v.decay_scale)
    stick = bandpass(rng.standard_normal(len(body)), 800, 4000 + 4000 * h) * envelope(dur, 0.006)
    return body + (0.05 + 0.15 * h) * stick


def crash(h: float, v: KitVoicing, rng: np.random.Generator) -> np.ndarray:
    dur = 4 * v.cymbal_decay_s * v.decay_scale
    source = 0.5 * metallic(dur, v.hat_base * 0.8, rng) + rng.standard_normal(int(dur * SR))
    wash = bandpass(source, 2000, 8000 + 8000 * h, order=2)
    return wash * envelope(dur, v.cymbal_decay_s * v.decay_scale * (0.7 + 0.3 * h), 0.001)


def ride(h: float, v: KitVoicing, rng: np.random.Generator) -> np.ndarray:
    dur = 1.6 * v.decay_scale + 0.2
    impulse = np.zeros(int(dur * SR))
    impulse[0] = 1.0
    # Inharmonic plate modes rung by the stick, plus a thin wash of noise.
    modes = sum(resonator(impulse, f, 60) * w for f, w in ((2950, 1.0), (4130, 0.7), (5370, 0.5), (720, 0.3)))
    wash = highpass(rng.standard_normal(len(impulse)), 5000) * envelope(dur, 0.5 * v.decay_scale)
    return _norm(modes, 1.0) * envelope(dur, 0.6 * v.decay_scale) + (0.15 + 0.2 * h) * wash


# name, role, builder(h, voicing, rng), pan, mute group
_INSTRUMENTS: tuple[tuple[str, str, Callable, float, int], ...] = (
    ("Kick", "kick", kick, 0.0, -1),
    ("Snare", "snare", snare, 0.05, -1),
    ("Rim", "rim", rim, 0.05, -1),
    ("Clap", "clap", clap, 0.0, -1),
    ("Hat Closed", "hat_closed", lambda h, v, r: hat(h, v, r, 0.035), 0.3, 1),
    ("Hat Pedal", "hat_pedal", lambda h, v, r: hat(h * 0.6, v, r, 0.025), 0.3, 1),
    ("Hat Open", "hat_open", lambda h, v, r: hat(h, v, r, 0.3), 0.3, 1),
    ("Tom High", "tom_high", lambda h, v, r: tom(h, v, r, v.tom_hz[0]), -0.2, -1),
    ("Tom Mid", "tom_mid", lambda h, v, r: tom(h, v, r, v.tom_hz[1]), 0.1, -1),
    ("Tom Low", "tom_low", lambda h, v, r: tom(h, v, r, v.tom_hz[2]), 0.35, -1),
    ("Crash", "crash", crash, -0.4, -1),
    ("Ride", "ride", ride, 0.45, -1),
)


def _stereo(
    make: Callable[[np.random.Generator], np.ndarray], rng: np.random.Generator, spread: bool
) -> np.ndarray:
    """(2, N) float32: cymbals get independent noise per channel, drums are centred mono."""
    left = make(rng)
    right = make(rng) if spread else left
    n = min(len(left), len(right))
    return np.stack([left[:n], right[:n]]).astype(np.float32)


def make_layers(
    build: Callable[[float, np.random.Generator], np.ndarray],
    rng: np.random.Generator,
    n_layers: int = 3,
    spread: bool = False,
) -> tuple[Layer, ...]:
    """Velocity layers splitting [0, 1] evenly; layer k is played harder (brighter, louder).

    Args:
        build: (hardness, rng) -> mono audio.
        rng: randomness for the noise parts.
        n_layers: number of layers.
        spread: independent noise per channel (cymbals).
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    edges = np.linspace(0.0, 1.0, n_layers + 1)
    layers = []
    for k in range(n_layers):
        h = (k + 1) / n_layers
        audio = _stereo(lambda r, h=h: build(h, r), rng, spread)
        audio = _norm(audio, 0.45 + 0.5 * h).astype(np.float32)  # soft layers are quieter
        audio.flags.writeable = False
        layers.append(Layer(f"layer{k + 1}", float(edges[k]), float(edges[k + 1]), audio=audio))
    return tuple(layers)


@functools.lru_cache(maxsize=16)
def procedural_kit(voicing: str = "acoustic", seed: int = 0, n_layers: int = 3) -> Kit:
    """A complete procedural kit (kick, snare, rim, clap, three hats, three toms, crash, ride).

    Cached: a kit is immutable (frozen dataclasses, read-only arrays), so builds share it.

    Args:
        voicing: one of `VOICINGS` ("acoustic", "electronic", "tight").
        seed: seeds the noise; same seed, identical samples.
        n_layers: velocity layers per instrument.
    """
    if voicing not in VOICINGS:
        raise ValueError(f"unknown voicing {voicing!r}; expected one of {sorted(VOICINGS)}")
    v = VOICINGS[voicing]
    instruments = []
    for idx, (name, role, fn, pan, group) in enumerate(_INSTRUMENTS):
        rng = np.random.default_rng([seed, idx, sum(map(ord, voicing))])
        spread = role in ("crash", "ride", "hat_open")
        layers = make_layers(lambda h, r, fn=fn: fn(h, v, r), rng, n_layers, spread)
        instruments.append(Instrument(idx, name, role, layers, pan=pan, mute_group=group))
    return Kit(
        name=v.name,
        author="TRIA demo synthesiser",
        licence=PROCEDURAL_LICENCE,
        instruments=tuple(instruments),
    )


def procedural_kits(seed: int = 0, n_layers: int = 3) -> list[Kit]:
    """One kit per voicing, sorted by name."""
    return sorted((procedural_kit(v, seed, n_layers) for v in VOICINGS), key=lambda k: k.name)


__all__ = [
    "PROCEDURAL_LICENCE",
    "VOICINGS",
    "KitVoicing",
    "bandpass",
    "envelope",
    "highpass",
    "lowpass",
    "make_layers",
    "metallic",
    "procedural_kit",
    "procedural_kits",
    "resonator",
    "swept_sine",
]
