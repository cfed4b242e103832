"""Tokenize stage: DAC codes of each excerpt, one codec per Ray actor.

The codec is loaded once per actor (``__init__``) and reused for every batch, on the device Ray gave
the actor (:func:`pipelines.resources.actor_device`: the GPU that ``num_gpus`` reserved, else the CPU).
What the actors ask Ray for is decided on the driver by :func:`pipelines.resources.plan_pool`.
:class:`pipelines.stages.groups.GroupPromptsTokenizer` also runs the prompts stage on the actor's device.
"""

from __future__ import annotations

import io
from typing import Any

__all__ = ["CodecConfig", "Tokenizer", "flac_bytes"]

import numpy as np
import soundfile as sf
import torch

from pipelines.resources import actor_device
from tria.codec import Codec, CodecConfig


class Tokenizer:
    """Callable Ray actor class: adds ``tokens`` (B, 9, T) int16 and optional ``flac`` bytes; drops ``audio``."""

    def __init__(self, config: CodecConfig, flac_splits: tuple[str, ...] = ()):
        self.device = actor_device(config.device, "tokenize")
        self.codec = config.load(device=self.device)
        self.config = config
        self.flac_splits = set(flac_splits)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        audio = torch.from_numpy(np.ascontiguousarray(batch["audio"]))[:, None]  # (B, 1, N)
        codes = self.codec.encode(audio, Codec.sample_rate, batch_size=self.config.batch_size)
        out = {k: v for k, v in batch.items() if k != "audio"}
        out["tokens"] = codes.numpy().astype(np.int16)  # 0..1023 fits int16 (SHARDS.md)
        out["codec_id"] = np.asarray([self.codec.config_id] * len(codes))
        out["flac"] = np.asarray([flac_bytes(a) if str(s) in self.flac_splits else b""
                                  for a, s in zip(batch["audio"], batch["split"])], dtype=object)
        return out


def flac_bytes(audio: np.ndarray, sample_rate: int = Codec.sample_rate) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1, 1), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
