"""Rhythm prompts for the demo: the corpus's grooves played with non-drum sounds.

TRIA turns a rhythm gesture (tapping, clapping, beatboxing) into drums. To show that, the
demo needs gestures whose rhythm is known: we take a groove and play it with a "kit" of
everyday sounds, mapping by register as a person does when they imitate drums. Low drums
(kick, floor tom) become low, dull sounds (a knuckle on a table, a voiced "boom"); snare and
clap become mid-bright bursts; hats and cymbals become bright clicks and hisses.

Mouth-like sounds are noise (or a buzzy pulse train for voiced ones) through a bank of
formant resonators at vowel formants, which is how a vocal tract colours a burst of breath.

A gesture kit is an ordinary `Kit`, so `render.render_events` plays it; `render_gesture`
adds a faint background hiss so the prompt sounds recorded rather than synthetic.
"""

from __future__ import annotations

import numpy as np

from pipelines.demo.grooves import Groove
from pipelines.demo.kits import SAMPLE_RATE, Instrument, Kit
from pipelines.demo.render import RenderConfig, RenderedLoop, render_events
from pipelines.demo.synth import (
    PROCEDURAL_LICENCE,
    bandpass,
    envelope,
    highpass,
    lowpass,
    make_layers,
    resonator,
)

SR = SAMPLE_RATE

# (F1, F2, F3) in Hz of a few vowels, adult average: "oo" is dark, "ah" open, "ee" bright.
FORMANTS = {"oo": (300, 870, 2240), "oh": (500, 900, 2400), "ah": (730, 1090, 2440), "eh": (530, 1840, 2480)}

STYLES = ("beatbox", "tapping", "clapping")


def _unit(x: np.ndarray) -> np.ndarray:
    """Scale to peak 1: a resonator's impulse response is tiny next to the noise mixed in."""
    m = float(np.max(np.abs(x)))
    return x / m if m > 0 else x


def formant_filter(x: np.ndarray, vowel: str, q: float = 6.0) -> np.ndarray:
    """Colour `x` with a vowel's first three formants (parallel resonators, falling weights)."""
    return sum(resonator(x, f, q) * w for f, w in zip(FORMANTS[vowel], (1.0, 0.5, 0.25)))


def pulse_train(seconds: float, hz: float) -> np.ndarray:
    """A glottal-like buzz: one impulse per period. Shape (N,)."""
    out = np.zeros(int(seconds * SR))
    out[:: max(int(SR / hz), 1)] = 1.0
    return out


def mouth(
    vowel: str, seconds: float, decay_s: float, rng: np.random.Generator, voiced_hz: float = 0.0
) -> np.ndarray:
    """A breath (or voiced, if `voiced_hz`) burst shaped by a vowel's formants. Shape (N,)."""
    n = int(seconds * SR)
    source = rng.standard_normal(n) * 0.3
    if voiced_hz:
        source = source + pulse_train(seconds, voiced_hz)[:n] * 4.0
    return _unit(formant_filter(source, vowel)) * envelope(seconds, decay_s, 0.002)


def knock(hz: float, seconds: float, decay_s: float, dull: float, rng: np.random.Generator) -> np.ndarray:
    """A knuckle or stick on wood: resonances of a plank, low-passed by how soft the hit is."""
    n = int(seconds * SR)
    excite = np.zeros(n)
    excite[0] = 1.0
    excite += 0.05 * rng.standard_normal(n) * envelope(seconds, 0.002)
    body = resonator(excite, hz, 8) + 0.5 * resonator(excite, hz * 2.7, 12)
    return lowpass(body * envelope(seconds, decay_s, 0.0003), 4000 * (1 - dull) + 400)


def click(hz: float, rng: np.random.Generator) -> np.ndarray:
    """A tongue or pen click: a very short, bright ping."""
    n = int(0.05 * SR)
    excite = np.zeros(n)
    excite[0] = 1.0
    ping = _unit(resonator(excite, hz, 25)) * envelope(0.05, 0.006, 0.0002)
    return ping + 0.1 * highpass(rng.standard_normal(n), 4000) * envelope(0.05, 0.002, 0.0002)


def hand_clap(rng: np.random.Generator, body_hz: float = 1200.0) -> np.ndarray:
    """A single person's clap: a bright noise burst with a short palm resonance."""
    n = int(0.2 * SR)
    noise = bandpass(rng.standard_normal(n), body_hz * 0.6, body_hz * 3.0)
    return noise * envelope(0.2, 0.025, 0.0005) + 0.3 * resonator(noise, body_hz, 5) * envelope(0.2, 0.01)


def hiss(seconds: float, decay_s: float, cutoff: float, rng: np.random.Generator) -> np.ndarray:
    """A "ts" or "tssh": bright noise, band-limited as breath through teeth is (up to ~12 kHz)."""
    noise = bandpass(rng.standard_normal(int(seconds * SR)), cutoff, 12000, order=3)
    return noise * envelope(seconds, decay_s, 0.001)


def mix(*parts: np.ndarray) -> np.ndarray:
    """Sum mono signals of different lengths (zero-padded to the longest)."""
    out = np.zeros(max(len(p) for p in parts))
    for p in parts:
        out[: len(p)] += p
    return out


def _palette(style: str):
    """role -> builder(hardness, rng) for one gesture style. Low roles get low, dull sounds."""
    if style == "beatbox":
        return {
            "kick": lambda h, r: lowpass(mouth("oo", 0.25, 0.05, r, voiced_hz=90), 900 + 600 * h),
            "snare": lambda h, r: mix(mouth("eh", 0.22, 0.05, r), 0.5 * hiss(0.22, 0.04, 3000, r)),
            "hat_closed": lambda h, r: hiss(0.08, 0.015, 6000 - 1500 * h, r),
            "hat_open": lambda h, r: hiss(0.3, 0.09, 5000, r),
            "tom_high": lambda h, r: lowpass(mouth("ah", 0.25, 0.07, r, voiced_hz=180), 2500),
            "tom_low": lambda h, r: lowpass(mouth("oh", 0.3, 0.08, r, voiced_hz=120), 1800),
            "crash": lambda h, r: hiss(0.6, 0.2, 3500, r),
        }
    if style == "tapping":
        return {
            "kick": lambda h, r: knock(140, 0.2, 0.05, 0.85, r),
            "snare": lambda h, r: knock(900, 0.15, 0.03, 0.2, r),
            "hat_closed": lambda h, r: click(3500 + 1000 * h, r),
            "hat_open": lambda h, r: mix(click(3000, r), 0.3 * hiss(0.15, 0.05, 6000, r)),
            "tom_high": lambda h, r: knock(420, 0.2, 0.04, 0.5, r),
            "tom_low": lambda h, r: knock(240, 0.2, 0.05, 0.7, r),
            "crash": lambda h, r: mix(click(2500, r), 0.5 * hiss(0.4, 0.12, 4000, r)),
        }
    if style == "clapping":
        return {
            "kick": lambda h, r: knock(110, 0.2, 0.04, 0.95, r),  # a slap on the thigh or chest
            "snare": lambda h, r: hand_clap(r, 1100 + 300 * h),
            "hat_closed": lambda h, r: click(2800 + 800 * h, r),
            "hat_open": lambda h, r: hand_clap(r, 2200) * 0.6,
            "tom_high": lambda h, r: knock(380, 0.15, 0.03, 0.6, r),
            "tom_low": lambda h, r: knock(200, 0.15, 0.04, 0.8, r),
            "crash": lambda h, r: hand_clap(r, 1600),
        }
    raise ValueError(f"unknown gesture style {style!r}; expected one of {STYLES}")


def gesture_kit(style: str, seed: int = 0, n_layers: int = 2) -> Kit:
    """A kit of non-drum sounds for one gesture style ("beatbox", "tapping", "clapping").

    Roles not in the palette (ride, toms in the middle, shakers) reach these instruments
    through the usual kit fallbacks.
    """
    palette = _palette(style)
    instruments = []
    for idx, (role, build) in enumerate(palette.items()):
        rng = np.random.default_rng([seed, idx, len(style)])
        layers = make_layers(build, rng, n_layers)
        instruments.append(
            Instrument(idx, f"{style} {role}", role, layers, mute_group=1 if "hat" in role else -1)
        )
    return Kit(name=f"gesture-{style}", author="TRIA demo synthesiser", licence=PROCEDURAL_LICENCE,
               instruments=tuple(instruments))  # fmt: skip


def render_gesture(groove: Groove, style: str, seed: int = 0, noise_db: float = -55.0) -> RenderedLoop:
    """Play `groove` with a gesture kit, in a small room, over a faint background hiss.

    Returns:
        The gesture: audio (2, N) float32 at 44.1 kHz, tier "synthetic", licence CC0.
    """
    kit = gesture_kit(style, seed)
    config = RenderConfig(reverb_mix=0.06, reverb_rt60_s=0.25)
    loop = render_events(groove.events, kit, groove.seconds, seed=seed, config=config)
    rng = np.random.default_rng([seed, 0xB6])
    floor = lowpass(rng.standard_normal(loop.audio.shape), 6000) * 10 ** (noise_db / 20)
    audio = loop.audio + floor.astype(np.float32)
    audio *= config.peak / float(np.max(np.abs(audio)))
    return RenderedLoop(audio.astype(np.float32), loop.sample_rate, kit.name, kit.licence, loop.instruments)


__all__ = [
    "FORMANTS",
    "STYLES",
    "formant_filter",
    "gesture_kit",
    "hand_clap",
    "knock",
    "mix",
    "mouth",
    "render_gesture",
]
