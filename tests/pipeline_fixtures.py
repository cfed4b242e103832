"""A fixture corpus for pipeline tests: procedurally rendered drum loops, one full mix, and planted
bad files of every kind the filter must reject."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from pipelines.demo.grooves import GENRES, generate_groove
from pipelines.demo.render import render_events
from pipelines.demo.synth import procedural_kit

SR = 44_100

# planted bad file -> the reason it must be rejected with
BAD_FILES = {
    "bad_corrupt.wav": "unreadable",
    "bad_empty.wav": "unreadable",
    "bad_silent.wav": "silent",
    "bad_8khz.wav": "sample_rate_too_low",
    "bad_nan.wav": "non_finite",
}


def render_loop(seconds: float, seed: int) -> np.ndarray:
    """(N, 2) float32 stereo drum loop from a procedural kit."""
    groove = generate_groove(sorted(GENRES)[seed % len(GENRES)], seconds, seed=seed)
    kit = procedural_kit(("acoustic", "electronic", "tight")[seed % 3], seed=seed)
    return render_events(groove.events, kit, seconds, seed=seed).audio.T.astype(np.float32)


def make_drums(folder: Path, n_loops: int = 8, seconds: float = 8.0, bad: bool = True) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_loops):
        p = folder / f"loop_{i:02d}.wav"
        sf.write(p, render_loop(seconds, seed=i), SR)
        paths.append(p)
    if bad:
        (folder / "bad_corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00garbage-garbage")
        (folder / "bad_empty.wav").write_bytes(b"")
        sf.write(folder / "bad_silent.wav", np.zeros((3 * SR, 2), np.float32), SR)
        sf.write(folder / "bad_8khz.wav", render_loop(3.0, 99)[::5][: 3 * 8000], 8000)
        nan = render_loop(3.0, 98)
        nan[1000:1100] = np.nan
        sf.write(folder / "bad_nan.wav", nan, SR, subtype="FLOAT")
    return paths


def make_mix(folder: Path, seconds: float = 8.0, seed: int = 50) -> Path:
    """A 'full mix': drums plus a bass line and a pad."""
    folder.mkdir(parents=True, exist_ok=True)
    drums = render_loop(seconds, seed)
    t = np.arange(drums.shape[0]) / SR
    bass = 0.3 * np.sin(2 * np.pi * 55 * t * (1 + (np.floor(t * 2) % 4) / 4))
    pad = 0.1 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 0.25 * t) ** 2
    mix = drums + (bass + pad)[:, None]
    p = folder / "song_00.wav"
    sf.write(p, (0.9 * mix / np.abs(mix).max()).astype(np.float32), SR)
    return p
