"""The one TRIA checkpoint format: a plain dict saved with `torch.save`, read with `weights_only=True`.

Layout (`FORMAT` = "tria-checkpoint-v1"):

    {
        "format": "tria-checkpoint-v1",
        "model_config": ModelConfig as a dict,
        "model": model state dict,
        "codec_id": str,          # which tokenizer the tokens came from
        "features": dict,         # the rhythm-feature config the model was trained with
        "features_id": str,       # its short stable hash
        "train_state": dict,      # optional: optimiser, scheduler, step, data position, ...
    }

Only plain containers, numbers, strings and tensors go in, so loading never needs to unpickle
arbitrary objects (`weights_only=True`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tria.model import TRIA, ModelConfig

__all__ = ["FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "build_model_from_checkpoint"]

FORMAT = "tria-checkpoint-v1"
REQUIRED_KEYS = ("format", "model_config", "model", "codec_id", "features", "features_id")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not in the expected format."""


def _as_dict(obj: Any, name: str) -> dict:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"{name} must be a dataclass instance or a mapping, got {type(obj).__name__}")


def save_checkpoint(
    path: str | os.PathLike,
    model_config: ModelConfig | Mapping[str, Any],
    model: torch.nn.Module | Mapping[str, torch.Tensor],
    codec_id: str,
    features: Any,
    features_id: str,
    train_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically: to a temporary file in the same folder, then `os.replace`.

    A crash mid-write therefore leaves either the previous file or none, never a truncated one.

    Args:
        path: destination file; parent folders are created.
        model_config: the model's `ModelConfig` (or its dict).
        model: the module (a DDP/compiled wrapper should be unwrapped first) or its state dict.
        codec_id: identifier of the codec the tokens came from.
        features: rhythm-feature config (dataclass or mapping).
        features_id: the feature config's stable id.
        train_state: optional plain-data training state.

    Returns:
        The written path.
    """
    path = Path(path)
    state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    ckpt = {
        "format": FORMAT,
        "model_config": _as_dict(model_config, "model_config"),
        "model": state,
        "codec_id": str(codec_id),
        "features": _as_dict(features, "features"),
        "features_id": str(features_id),
    }
    if train_state is not None:
        ckpt["train_state"] = dict(train_state)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint.

    Args:
        path: checkpoint file.
        map_location: where tensors are loaded.

    Returns:
        The checkpoint dict (see the module docstring).

    Raises:
        CheckpointError: the file is missing, corrupt, not loadable with `weights_only=True`,
            or not a "tria-checkpoint-v1" dict with all required keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    _check_crc(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # a reference to a class or function: not corruption, a refusal
            # torch's own message advises retrying with weights_only=False: never for a file we do not trust.
            raise CheckpointError(
                f"cannot read checkpoint {path}: it holds objects other than tensors and plain containers; "
                f"refusing to unpickle them, since unpickling can run arbitrary code "
                f"({next(x for x in str(e).splitlines() if 'GLOBAL' in x).strip()[:200]})"
            ) from e
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e)[:300]}") from e
    except Exception as e:  # garbage bytes reach the unpickler as IndexError, KeyError, struct.error, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e)[:300]}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {ckpt.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks keys {missing}")
    for key in ("model_config", "model", "features"):
        if not isinstance(ckpt[key], dict):
            raise CheckpointError(f"{path}: {key!r} must be a dict, got {type(ckpt[key]).__name__}")
    return ckpt


def _check_crc(path: Path) -> None:
    """Raise CheckpointError when a member of the checkpoint's zip fails its CRC-32.

    `torch.load` does not check the CRCs its own writer stores, so flipped bits in tensor data load
    silently as wrong weights. Reading the file once more costs about 1 s per GB.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return  # not a (whole) zip: torch.load below says what is wrong with it
    if bad is not None:
        raise CheckpointError(f"cannot read checkpoint {path}: member {bad!r} fails its CRC-32 check "
                              "(the file was corrupted after it was written)")


def build_model_from_checkpoint(ckpt: Mapping[str, Any]) -> TRIA:
    """Rebuild the model of a loaded checkpoint, with its weights, in eval mode.

    Raises:
        CheckpointError: the config has unknown or invalid fields, or the weights do not fit it.
    """
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    raw = dict(ckpt["model_config"])
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise CheckpointError(f"model_config has unknown fields {unknown}")
    try:
        model = TRIA(ModelConfig(**raw))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid model_config {raw}: {e}") from e
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"weights do not match model_config: {str(e)[:500]}") from e
    return model.eval()
