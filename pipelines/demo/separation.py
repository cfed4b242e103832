"""SIMULATED source separation: demo drum loops with the artefacts Demucs leaves on real mixes.

The curriculum experiments ask what noisy *separated* drums should train. Offline there are no
Demucs weights, so the demo corpus gets a simulated separated tier instead: a rendered loop is
mixed with procedural music (bass, chords, an arpeggio at the loop's tempo), then "separated" with a
degraded ratio mask, the way separation degrades drums:

* **bleed**: the mask never closes fully, so some of the music stays (``bleed``);
* **smeared transients**: where smoothing the estimate's magnitudes over ``smear_ms`` raises them,
  that much energy is added with random phase, so every hit gets a noisy pre- and post-echo;
* **dulled highs**: the mask rolls off above ``highcut_hz`` (cymbals and snare wires go dull);
* **musical noise**: random per-bin mask jitter (``jitter``), the warbling of mask-based separation.

This is not Demucs and is not claimed to match its artefact statistics; the catalogue and the README
label the tier as simulated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

SR = 44_100


@dataclass(frozen=True)
class SeparationArtefacts:
    """How the simulated separation degrades drums (see the module docstring)."""

    music_db: float = 0.0  # level of the music relative to the drums' RMS in the mix
    bleed: float = 0.15  # mask floor: the share of the music's magnitude that leaks through
    smear_ms: float = 60.0  # length of the mask's time smoothing
    highcut_hz: float = 7000.0  # where the mask starts to roll off
    high_atten_db: float = 15.0  # roll-off at Nyquist
    jitter: float = 0.35  # std of the log-normal mask noise
    n_fft: int = 2048


def accompaniment(n: int, bpm: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """(n,) procedural music at ``bpm``: a bass line, sustained chords and an arpeggio, seeded."""
    t = np.arange(n) / sr
    root = 36 + int(rng.integers(0, 12))  # MIDI note of the key
    scale = np.array([0, 2, 3, 5, 7, 8, 10])  # natural minor
    beat = 60.0 / bpm
    out = np.zeros(n)

    def note(start: float, dur: float, midi: float, amp: float, harmonics: int, decay: float) -> None:
        a, b = int(start * sr), min(n, int((start + dur) * sr))
        if a >= n or b <= a:
            return
        tt = t[a:b] - start
        f = 440.0 * 2 ** ((midi - 69) / 12)
        wave = sum(np.sin(2 * np.pi * f * h * tt) / h for h in range(1, harmonics + 1) if f * h < sr / 2)
        env = np.exp(-tt / decay) * np.minimum(1.0, np.minimum(tt, dur - tt) / 0.005)  # no clicks
        out[a:b] += amp * wave * env

    n_beats = int(np.ceil(n / sr / beat))
    degrees = rng.choice([0, 3, 4, 5], size=max(1, n_beats // 4 + 1))  # one chord per bar
    for bar, deg in enumerate(degrees):
        start = bar * 4 * beat
        chord = [scale[(deg + i) % 7] + 12 * ((deg + i) // 7) for i in (0, 2, 4)]
        for c in chord:  # pad
            note(start, 4 * beat, root + 24 + c, 0.12, 6, 3.0)
        for e in range(8):  # bass on eighths
            note(start + e * beat / 2, beat / 2, root + chord[0] + 12 * (e % 4 == 3), 0.35, 4, 0.25)
        for s in range(16):  # arpeggio on sixteenths, sometimes resting
            if rng.random() < 0.7:
                note(start + s * beat / 4, beat / 4, root + 36 + chord[s % 3], 0.08, 3, 0.12)
    return out


def simulate_separation(drums: np.ndarray, music: np.ndarray, cfg: SeparationArtefacts,
                        rng: np.random.Generator, sr: int = SR) -> tuple[np.ndarray, np.ndarray]:
    """Mix ``drums`` (n, C) with ``music`` (n,) and return ``(estimate, mix)``, both (n, C).

    The estimate is the mix through a degraded drum ratio mask (high roll-off, log-normal jitter, bleed
    floor), plus incoherent energy wherever smoothing its magnitudes over time raises them (pre- and
    post-echo of every hit), resynthesised by inverse STFT.
    """
    drums = np.asarray(drums, dtype=np.float64)
    if drums.ndim == 1:
        drums = drums[:, None]
    n = drums.shape[0]
    rms_d = np.sqrt(np.mean(drums**2)) + 1e-9
    rms_m = np.sqrt(np.mean(music**2)) + 1e-9
    music = music[:n] * (rms_d / rms_m) * 10 ** (cfg.music_db / 20)
    mix = drums + music[:, None]
    hop = cfg.n_fft // 4
    _, _, D = signal.stft(drums.T, sr, nperseg=cfg.n_fft, noverlap=cfg.n_fft - hop)
    _, _, M = signal.stft(mix.T, sr, nperseg=cfg.n_fft, noverlap=cfg.n_fft - hop)
    A = np.abs(M - D)
    mask = np.abs(D) / (np.abs(D) + A + 1e-9)  # (C, F, T) ideal ratio mask of the drums
    freqs = np.fft.rfftfreq(cfg.n_fft, 1 / sr)
    over = np.clip((freqs - cfg.highcut_hz) / max(1.0, sr / 2 - cfg.highcut_hz), 0, 1)
    mask = mask * (10 ** (-cfg.high_atten_db * over / 20))[None, :, None]
    mask = mask * np.exp(cfg.jitter * rng.standard_normal(mask.shape) - cfg.jitter**2 / 2)
    mask = np.clip(np.maximum(mask, cfg.bleed), 0, 1)
    S = mask * M
    frames = int(round(cfg.smear_ms / 1000 * sr / hop))
    if frames > 1:  # magnitudes smoothed over time, mix phase: a hit's energy spreads before and after it
        kernel = np.hanning(frames + 2)[1:-1]
        mag = signal.convolve(np.abs(S), (kernel / kernel.sum())[None, None, :], mode="same")
        extra = np.maximum(mag - np.abs(S), 0)  # where smoothing raised a bin: before and after each hit
        S = S + extra * np.exp(2j * np.pi * rng.random(S.shape))  # incoherent: heard as pre-echo, not as a hit
    _, est = signal.istft(S, sr, nperseg=cfg.n_fft, noverlap=cfg.n_fft - hop)
    est = est.T[:n]
    if est.shape[0] < n:
        est = np.pad(est, ((0, n - est.shape[0]), (0, 0)))
    peak = max(np.abs(est).max(), np.abs(mix).max(), 1e-9)
    scale = 0.95 / peak if peak > 0.95 else 1.0
    return (est * scale).astype(np.float32), (mix * scale).astype(np.float32)
