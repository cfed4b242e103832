"""Audio I/O and resampling shared by the library, the pipeline and the tests.

Every reader in the project goes through :func:`load_audio`, so a broken file becomes an
:class:`AudioError` with a short machine-readable ``reason`` (the pipeline stores it in the
rejects table) instead of a crash somewhere downstream.
"""

from __future__ import annotations

import os
from pathlib import Path

import julius
import numpy as np
import soundfile as sf
import torch

# julius' windowed-sinc resampler with the authors' settings (SPEC 1, step 4; tria/dsp.py there).
RESAMPLE_ZEROS = 24
RESAMPLE_ROLLOFF = 0.945


class AudioError(ValueError):
    """A file or array that cannot be used as audio. ``reason`` is a short slug for the catalogue."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    mono: bool = True,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> tuple[np.ndarray, int]:
    """Read (part of) an audio file as float32.

    Args:
        path: file to read (anything libsndfile reads: wav, flac, ogg, mp3 where supported).
        sample_rate: resample to this rate; None keeps the file's rate.
        mono: average the channels.
        offset_s, duration_s: read only this window (seconds); None reads to the end.

    Returns:
        ``(audio (C, N) float32, sample_rate)``; C is 1 when ``mono``.

    Raises:
        AudioError: with reason ``missing``, ``unreadable``, ``empty`` or ``non_finite``.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError("missing", f"{path} does not exist or is not a regular file")
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            start = int(round(offset_s * sr))
            frames = -1 if duration_s is None else int(duration_s * sr)
            if start:
                f.seek(min(start, f.frames))
            data = f.read(frames=frames, dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise AudioError("unreadable", f"{path}: {e}") from e
    audio = np.ascontiguousarray(data.T)  # (C, N)
    check_audio(audio, str(path))
    if mono:
        audio = audio.mean(axis=0, keepdims=True)
    if sample_rate is not None and sample_rate != sr:
        audio = resample(torch.from_numpy(audio), sr, sample_rate).numpy()
        sr = sample_rate
    return audio, sr


def check_audio(audio: np.ndarray | torch.Tensor, what: str = "audio") -> None:
    """Raise :class:`AudioError` if ``audio`` has no samples or holds NaN/Inf."""
    is_np = isinstance(audio, np.ndarray)
    if (audio.size if is_np else audio.numel()) == 0:
        raise AudioError("empty", f"{what} has no samples")
    finite = np.isfinite(audio).all() if is_np else bool(torch.isfinite(audio).all())
    if not finite:
        raise AudioError("non_finite", f"{what} contains NaN or Inf samples")


def save_audio(path: str | os.PathLike, audio: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Write ``audio`` (C, N) or (N,) to ``path`` (format from the suffix; 16-bit PCM for wav)."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().float().numpy()
    audio = np.atleast_2d(audio)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "PCM_16" if path.suffix.lower() in (".wav", ".flac") else None
    sf.write(str(path), audio.T, sample_rate, subtype=subtype)
    return path


def resample(audio: torch.Tensor, sr_in: int, sr_out: int) -> torch.Tensor:
    """Resample along the last axis with julius' windowed sinc (zeros=24, rolloff=0.945)."""
    if sr_in == sr_out:
        return audio
    return julius.resample_frac(audio, int(sr_in), int(sr_out), zeros=RESAMPLE_ZEROS, rolloff=RESAMPLE_ROLLOFF)
