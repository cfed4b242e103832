"""Synthetic test audio (numpy), importable from any test: `from synth_audio import click_track`."""

from __future__ import annotations

import numpy as np

SR = 44_100


def click_track(times_s, duration_s: float, sr: int = SR, freq: float = 2000.0, decay_s: float = 0.01,
                amp: float = 0.8) -> np.ndarray:
    """Decaying sine bursts at ``times_s``: (N,) float32."""
    n = int(duration_s * sr)
    y = np.zeros(n, dtype=np.float32)
    t = np.arange(int(0.08 * sr)) / sr
    burst = (amp * np.sin(2 * np.pi * freq * t) * np.exp(-t / decay_s)).astype(np.float32)
    for ts in times_s:
        i = int(ts * sr)
        m = min(len(burst), n - i)
        if m > 0:
            y[i:i + m] += burst[:m]
    return y


def kick(sr: int = SR) -> np.ndarray:
    """A low sine sweep with a fast decay (~60 Hz body)."""
    t = np.arange(int(0.25 * sr)) / sr
    f = 40 + 80 * np.exp(-t / 0.03)
    return (0.9 * np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.08)).astype(np.float32)


def hat(sr: int = SR, seed: int = 0) -> np.ndarray:
    """High-passed noise burst (energy above ~6 kHz)."""
    rng = np.random.default_rng(seed)
    n = int(0.05 * sr)
    noise = rng.standard_normal(n).astype(np.float32)
    spec = np.fft.rfft(noise)
    spec[np.fft.rfftfreq(n, 1 / sr) < 6000] = 0
    y = np.fft.irfft(spec, n).astype(np.float32)
    return 0.5 * y / np.abs(y).max() * np.exp(-np.arange(n) / (0.01 * sr)).astype(np.float32)


def place(events, duration_s: float, sr: int = SR) -> np.ndarray:
    """Mix ``[(time_s, sound), ...]`` into a (N,) track."""
    y = np.zeros(int(duration_s * sr), dtype=np.float32)
    for ts, s in events:
        i = int(ts * sr)
        m = min(len(s), len(y) - i)
        y[i:i + m] += s[:m]
    return y


def sine_kick(sr: int = SR, freq: float = 55.0) -> np.ndarray:
    """A pure low sine with a 5 ms attack and 100 ms decay: energy only below ~150 Hz."""
    t = np.arange(int(0.3 * sr)) / sr
    env = np.minimum(t / 0.005, 1.0) * np.exp(-t / 0.1)
    return (0.8 * np.sin(2 * np.pi * freq * t) * env).astype(np.float32)


def open_hat(sr: int = SR, seed: int = 0, decay_s: float = 0.1) -> np.ndarray:
    """Noise above 4 kHz, 400 ms with an exponential decay (an open hi-hat)."""
    rng = np.random.default_rng(seed)
    n = int(0.4 * sr)
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[np.fft.rfftfreq(n, 1 / sr) < 4000] = 0
    y = np.fft.irfft(spec, n)
    return (y / np.abs(y).max() * np.exp(-np.arange(n) / (decay_s * sr))).astype(np.float32)
