"""Render note events with a kit into a stereo 44.1 kHz loop.

What a sampler such as Hydrogen does, reduced to what matters for training data:

* velocity-layer choice by the layer's [min, max] range, then gain = velocity x instrument
  volume x instrument gain x layer gain (Hydrogen scales by velocity as well);
* pitch shift of a layer by resampling (Hydrogen's layer pitch, in semitones);
* Hydrogen's "ratio" pan law: the far channel is scaled by 1 - |pan|, the near one kept;
* chokes: an open hi-hat is cut (5 ms fade) by the next closed or pedal hat, and
  instruments sharing a mute group cut each other;
* a light room: a synthetic exponentially decaying noise impulse response (seeded),
  mixed ~10 % wet, because dry one-shots sound unlike any recording the model will see;
* peak normalisation below full scale.

The result carries the kit's licence and the tier `synthetic`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.signal import fftconvolve

from pipelines.demo.grooves import NoteEvent
from pipelines.demo.kits import SAMPLE_RATE, Instrument, Kit, Layer, layer_audio

_HAT_CHOKERS = ("hat_closed", "hat_pedal")


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """How loops are rendered.

    Attributes:
        sample_rate: output rate (Hz).
        reverb_mix: wet fraction of the room (0 disables it).
        reverb_rt60_s: time for the room to decay by 60 dB.
        reverb_predelay_ms: gap before the first reflection.
        peak: output peak after normalisation (below 1 to leave headroom for codecs).
        choke_fade_ms: fade applied where a sound is choked.
    """

    sample_rate: int = SAMPLE_RATE
    reverb_mix: float = 0.1
    reverb_rt60_s: float = 0.35
    reverb_predelay_ms: float = 4.0
    peak: float = 0.89
    choke_fade_ms: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.reverb_mix <= 1.0:
            raise ValueError(f"reverb_mix must be in [0, 1], got {self.reverb_mix}")
        if not 0.0 < self.peak < 1.0:
            raise ValueError(f"peak must be in (0, 1), got {self.peak}")


@dataclasses.dataclass(frozen=True)
class RenderedLoop:
    """A rendered loop.

    Attributes:
        audio: (2, N) float32 in [-peak, peak].
        sample_rate: Hz.
        kit: kit name.
        licence: the kit's licence (the samples' licence carries over to the loop).
        instruments: {role: instrument name} that played each role.
        tier: always "synthetic" (rendered from sampled or generated kits).
    """

    audio: np.ndarray
    sample_rate: int
    kit: str
    licence: str
    instruments: dict[str, str]
    tier: str = "synthetic"

    @property
    def seconds(self) -> float:
        return self.audio.shape[-1] / self.sample_rate


def choose_instruments(kit: Kit, roles: Sequence[str], rng: np.random.Generator) -> dict[str, Instrument]:
    """Pick one instrument per role for a whole loop (a kit with 12 kicks uses one at a time).

    Roles the kit cannot play, even through fallbacks, are left out.
    """
    chosen = {}
    for role in sorted(set(roles)):
        options = kit.candidates(role)
        if options:
            chosen[role] = options[int(rng.integers(len(options)))]
    return chosen


def pan_gains(pan: float) -> tuple[float, float]:
    """(left, right) gains of the ratio pan law: centre is (1, 1), hard right is (0, 1)."""
    return min(1.0, 1.0 - pan), min(1.0, 1.0 + pan)


def pitch_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Play `audio` (C, N) faster or slower by 2**(semitones/12), like a sampler does."""
    if semitones == 0:
        return audio
    rate = 2.0 ** (semitones / 12.0)
    n_out = max(int(audio.shape[-1] / rate), 1)
    src = np.arange(n_out) * rate
    grid = np.arange(audio.shape[-1])
    return np.stack([np.interp(src, grid, ch) for ch in audio]).astype(np.float32)


def room_impulse(config: RenderConfig, seed: int) -> np.ndarray:
    """A short synthetic room: decorrelated decaying noise per channel, unit energy. (2, L)."""
    rng = np.random.default_rng([seed, 0x5EED])
    sr = config.sample_rate
    n = int(config.reverb_rt60_s * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal((2, n)) * np.exp(-6.91 * t / config.reverb_rt60_s)  # -60 dB at rt60
    pre = np.zeros((2, int(config.reverb_predelay_ms * sr / 1000)))
    ir = np.concatenate([pre, tail], axis=1)
    return ir / np.sqrt(np.sum(ir**2, axis=1, keepdims=True))


def _resolve(
    event: NoteEvent, kit: Kit, chosen: dict[str, Instrument], by_name: dict[str, Instrument]
) -> Instrument | None:
    if event.instrument and event.instrument in by_name:
        return by_name[event.instrument]
    return chosen.get(event.role)


def _chokes(later: Instrument, earlier: Instrument) -> bool:
    if earlier.mute_group >= 0 and later.mute_group == earlier.mute_group and later is not earlier:
        return True
    return earlier.role == "hat_open" and later.role in _HAT_CHOKERS


def _voices(
    events: Sequence[NoteEvent], kit: Kit, chosen: dict[str, Instrument], sr: int
) -> list[tuple[int, Instrument, NoteEvent]]:
    by_name = {i.name: i for i in kit.instruments}
    voices = []
    for event in events:
        inst = _resolve(event, kit, chosen, by_name)
        if inst is not None:
            voices.append((round(event.time_s * sr), inst, event))
    voices.sort(key=lambda v: v[0])
    return voices


def _choke_point(k: int, voices: list[tuple[int, Instrument, NoteEvent]]) -> int | None:
    start, inst, _ = voices[k]
    for later_start, later_inst, _ in voices[k + 1 :]:
        if later_start > start and _chokes(later_inst, inst):
            return later_start
    return None


def render_dry(
    events: Sequence[NoteEvent],
    kit: Kit,
    n_samples: int,
    chosen: dict[str, Instrument],
    config: RenderConfig = RenderConfig(),
) -> np.ndarray:
    """Mix the events' samples into a dry stereo buffer. Returns (2, n_samples) float64."""
    sr = config.sample_rate
    out = np.zeros((2, n_samples))
    voices = _voices(events, kit, chosen, sr)
    fade = max(int(config.choke_fade_ms * sr / 1000), 1)
    for k, (start, inst, event) in enumerate(voices):
        if not 0 <= start < n_samples:
            continue
        layer: Layer = inst.layer_for(event.velocity)
        audio = pitch_shift(layer_audio(kit, layer, sr), layer.pitch)
        end = min(start + audio.shape[-1], n_samples)
        choke = _choke_point(k, voices)
        if choke is not None and choke < end:
            end = choke
        seg = np.array(audio[:, : end - start], dtype=np.float64)
        if choke is not None and end == choke:
            n = min(fade, seg.shape[-1])
            seg[:, -n:] *= np.linspace(1.0, 0.0, n)
        left, right = pan_gains(inst.pan)
        gain = event.velocity * inst.volume * inst.gain * layer.gain
        out[0, start:end] += gain * left * seg[0]
        out[1, start:end] += gain * right * seg[1]
    return out


def render_events(
    events: Sequence[NoteEvent],
    kit: Kit,
    seconds: float,
    seed: int = 0,
    config: RenderConfig = RenderConfig(),
    instruments: dict[str, Instrument] | None = None,
) -> RenderedLoop:
    """Render a groove with a kit: layers, gains, pans, chokes, room, normalisation.

    Args:
        events: note events (times in seconds; events at or after `seconds` are dropped).
        kit: any `Kit` (real Hydrogen kit or procedural).
        seconds: loop length.
        seed: picks the instrument per role (when `instruments` is None) and the room.
        config: rendering settings.
        instruments: {role: instrument} to use instead of a seeded choice.

    Returns:
        The loop: audio (2, round(seconds * sample_rate)) float32.

    Raises:
        ValueError: non-positive length, or the kit has no instruments.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if not kit.instruments:
        raise ValueError(f"kit {kit.name!r} has no playable instruments")
    rng = np.random.default_rng(seed)
    chosen = (
        instruments if instruments is not None else choose_instruments(kit, [e.role for e in events], rng)
    )
    n = round(seconds * config.sample_rate)
    dry = render_dry(events, kit, n, chosen, config)
    if config.reverb_mix > 0:
        wet = fftconvolve(dry, room_impulse(config, seed), axes=-1)[:, :n]
        dry = (1 - config.reverb_mix) * dry + config.reverb_mix * wet
    peak = float(np.max(np.abs(dry)))
    audio = (dry * (config.peak / peak) if peak > 0 else dry).astype(np.float32)
    used = {role: inst.name for role, inst in sorted(chosen.items())}
    return RenderedLoop(audio, config.sample_rate, kit.name, kit.licence, used)


__all__ = [
    "RenderConfig",
    "RenderedLoop",
    "choose_instruments",
    "pan_gains",
    "pitch_shift",
    "render_dry",
    "render_events",
    "room_impulse",
]
