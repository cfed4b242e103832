"""Augment + features stage: K augmented rhythm prompts per excerpt and their rhythm features.

The authors' trainer recomputes these on every step (SPEC 4.1 step 3); here each excerpt gets K
variants once, seeded from its key, so a re-run gives identical features and the trainer only picks
one of the K per example. The rhythm prompt is an augmented copy of the target drums themselves
(self-supervised, SPEC 4.1).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tria.audio import AudioError, load_audio
from tria.features import RhythmFeatureConfig, align_features, rhythm_features
from tria.transforms import AugmentConfig, augment_rhythm

SAMPLE_RATE = 44_100
HOP = 512


@dataclass(frozen=True)
class PromptConfig:
    n_variants: int = 4  # K rhythm prompts per excerpt
    augment: AugmentConfig = field(default_factory=AugmentConfig.paper)
    features: RhythmFeatureConfig = field(default_factory=RhythmFeatureConfig.paper)
    duration_s: float = 6.0
    seed: int = 0


def variant_seeds(key: str, n_variants: int, seed: int = 0) -> list[int]:
    """Seeds of the K variants of one excerpt: stable across runs and machines."""
    base = zlib.crc32(key.encode()) ^ (seed * 0x9E3779B1)
    return [(base + 7919 * k) % (2**31) for k in range(n_variants)]


def load_excerpt(path: str, offset_s: float, duration_s: float) -> tuple[np.ndarray, int]:
    """Mono 44.1 kHz excerpt zero-padded to ``duration_s``: ``(audio (N,), valid_samples)``."""
    audio, _ = load_audio(path, sample_rate=SAMPLE_RATE, mono=True, offset_s=offset_s, duration_s=duration_s)
    n = int(round(duration_s * SAMPLE_RATE))
    valid = min(audio.shape[-1], n)
    out = np.zeros(n, dtype=np.float32)
    out[:valid] = audio[0, :valid]
    return out, valid


def audio_batch(batch: dict[str, np.ndarray], duration_s: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The excerpts of a batch (columns path, offset_s): ``(audio (B, N), n_frames (B,), error (B,))``.

    ``n_frames`` counts the valid token frames; ``error`` is "" or the reason a file became unreadable
    since the filter stage (reported, not raised).
    """
    B = len(batch["path"])
    n = int(round(duration_s * SAMPLE_RATE))
    T = n // HOP
    audio = np.zeros((B, n), dtype=np.float32)
    n_frames = np.zeros(B, dtype=np.int64)
    error = [""] * B
    for i in range(B):
        try:
            audio[i], valid = load_excerpt(str(batch["path"][i]), float(batch["offset_s"][i]), duration_s)
            n_frames[i] = (T * valid) // n  # SPEC 4.1 step 2: floor(T * signal_length / padded_length)
        except AudioError as e:
            error[i] = e.reason
    return audio, n_frames, error


def prompts_batch(batch: dict[str, np.ndarray], config: PromptConfig, device: str = "cpu") -> dict[str, np.ndarray]:
    """Ray Data batch function over excerpts; the augmentation and features run on ``device``.

    Input columns: key, path, offset_s, duration_s (+ metadata, passed through).
    Adds: audio (B, N) float32 (the clean excerpt, for the tokenizer), n_frames (valid token frames),
    feats (B, K, n_bands, T) float16 aligned to the T = N // 512 token frames, and ok/error (a file
    that became unreadable since the filter stage is reported, not raised).
    """
    B = len(batch["key"])
    audio, n_frames, error = audio_batch(batch, config.duration_s)
    T = audio.shape[1] // HOP
    ok = np.array([e == "" for e in error])
    K = config.n_variants
    feats = np.zeros((B, K, config.features.n_bands, T), dtype=np.float16)
    if ok.any():
        idx = np.flatnonzero(ok)
        x = torch.from_numpy(audio[idx]).to(device).repeat_interleave(K, dim=0)[:, None]  # (b*K, 1, N)
        seeds = [s for i in idx for s in variant_seeds(str(batch["key"][i]), K, config.seed)]
        with torch.inference_mode():
            prompts = augment_rhythm(x, SAMPLE_RATE, seeds, config.augment)
            f = align_features(rhythm_features(prompts, SAMPLE_RATE, config.features), T)  # (b*K, n_bands, T)
        feats[idx] = f.reshape(len(idx), K, config.features.n_bands, T).cpu().numpy().astype(np.float16)
    out: dict[str, Any] = dict(batch)
    out.update(audio=audio, n_frames=n_frames, feats=feats, ok=ok, error=np.asarray(error))
    return out
