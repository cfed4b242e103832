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

The authors' released checkpoints (`pretrained/tria/<name>/latest/model.pt` in
github.com/interactiveaudiolab/tria, read by their `app.py` with `torch.load` and
`model.load_state_dict`) are plain model state dicts. `load_checkpoint` recognises one by its
parameter names (which `tria.model` shares) and returns it in the layout above: the model config
inferred from the tensor shapes (or given), the codec their tokenizer uses (the public DAC 44 kHz
weights; their copy `dac_44.1kHz_7.7kbps.pt` is a file in DAC's own format, passed as the codec
weights) and the release rhythm features their app pairs with every shipped model (or given).
`fetch_release(name)` downloads one of them by name into a cache, like DAC's own weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tria.model import TRIA, ModelConfig

__all__ = ["FORMAT", "AUTHORS_FORMAT", "RELEASES", "CheckpointError", "save_checkpoint", "load_checkpoint",
           "export_checkpoint",
           "build_model_from_checkpoint", "from_authors_state_dict", "infer_model_config", "fetch_release",
           "resolve_checkpoint"]

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


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    model_config: ModelConfig | Mapping[str, Any] | None = None,
    features: Any = None,
) -> dict[str, Any]:
    """Read and validate a checkpoint: this project's format, or an authors' plain state dict.

    Args:
        path: checkpoint file.
        map_location: where tensors are loaded.
        model_config, features: for an authors' state dict only (see `from_authors_state_dict`).

    Returns:
        The checkpoint dict (see the module docstring).

    Raises:
        CheckpointError: the file is missing, corrupt, not loadable with `weights_only=True`,
            or neither a "tria-checkpoint-v1" dict with all required keys nor an authors' state dict.
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
    if is_authors_state_dict(ckpt):
        return from_authors_state_dict(ckpt, model_config, features, where=str(path))
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


# ----------------------------------------------------------------------------------------------
# The authors' released checkpoints


AUTHORS_FORMAT = "authors-state-dict"
AUTHORS_REPO = "interactiveaudiolab/tria"
AUTHORS_COMMIT = "47fcc5dc8a8b6994a453c3c950eae2f466ac3e62"
# Git LFS files of the authors' repository are served at this address (`{path}` in the repo).
RELEASE_URL = f"https://media.githubusercontent.com/media/{AUTHORS_REPO}/{AUTHORS_COMMIT}/{{path}}"


@dataclasses.dataclass(frozen=True)
class Release:
    """One released file of the authors' repository: its path there and its Git LFS pointer."""

    path: str
    sha256: str
    size: int


# name -> file; names as in the authors' app (`MODEL_ZOO`); sha256/size from the LFS pointers at
# AUTHORS_COMMIT. All three pair with the release rhythm features (their app's `feature_cfg`).
RELEASES: dict[str, Release] = {
    "small_musdb_moises_fsl_2b": Release("pretrained/tria/small_musdb_moises_fsl_2b/latest/model.pt",
                                         "5434f0c6bd26de5629179c6c209f44415ef444fa3dca9da1a672068926a1b643", 172260091),
    "small_musdb_moises_2b": Release("pretrained/tria/small_musdb_moises_2b/latest/model.pt",
                                     "4e20c3850253ba7fb267440573137f4b6099cad1e437fcfd574b84d60138155c", 172260091),
    "tiny_musdb_moises_fsl_2b": Release("pretrained/tria/distilled_tiny_musdb_moises_fsl_2b/latest/model.pt",
                                        "e980e5a5c4fd41ca82e9cf487d25082c6373cc7cf5f0ab891c0b47feed27e88b", 57925525),
    # Their DAC weights (DAC's own file layout), for `--codec-weights`.
    "dac_44.1kHz_7.7kbps": Release("pretrained/tokenizer/dac/dac_44.1kHz_7.7kbps.pt",
                                   "9ffa16e9cd52d67dadef026823403481930942f3fead32f44b75c4b60627246a", 306721572),
}

# The authors' config names that differ from `ModelConfig`'s, and the ones with a single valid value.
_AUTHORS_RENAMES = {"mult": "mlp_mult"}
_AUTHORS_FIXED = {"pos_enc": "rope", "use_sdpa": None}  # None: any value (an implementation choice)
_AUTHORS_KEYS = ("tokens_emb.weight", "head.weight", "adapter.weight", "in_proj.weight", "tokens_mask_emb")
_KNOWN_HEADS = {512: 8, 384: 6}  # tria small and the distilled student, for checkpoints without QK-norm


def is_authors_state_dict(obj: Any) -> bool:
    """True for a plain TRIA state dict (tensors only, the authors' parameter names)."""
    return (isinstance(obj, Mapping) and "format" not in obj and all(k in obj for k in _AUTHORS_KEYS)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def infer_model_config(state: Mapping[str, torch.Tensor], codebook_size: int = 1024) -> dict[str, Any]:
    """The `ModelConfig` fields a state dict's names and shapes determine.

    Width, band count, depth and MLP width come from shapes; heads from the QK-norm gains (head
    dim); codebooks from the embedding rows / `codebook_size`; `bias`, `qk_norm` and registers from
    which tensors exist; `share_emb` from the embedding and head holding equal values. Training-only
    fields (dropouts) and `max_len` (not stored) keep their defaults.

    Raises:
        CheckpointError: shapes that fit no TRIA (a head count that cannot be inferred, ...).
    """
    try:
        C = int(state["tokens_mask_emb"].shape[0])
        n_feats = int(state["adapter.weight"].shape[1])
        rows = int(state["tokens_emb.weight"].shape[0])
        layers = {int(m.group(1)) for k in state if (m := re.match(r"backbone\.layers\.(\d+)\.", k))}
        mlp_hidden = int(state["backbone.layers.0.mlp.mlp.0.weight"].shape[0])
    except (KeyError, IndexError) as e:
        raise CheckpointError(f"not a TRIA state dict: cannot read {e}") from e
    if rows % codebook_size:
        raise CheckpointError(f"{rows} embedding rows are not a multiple of codebook_size {codebook_size}")
    gain = state.get("backbone.layers.0.self_attn.qk_norm.g_q")
    if gain is not None:
        n_heads = C // int(gain.shape[0])
    elif C in _KNOWN_HEADS:
        n_heads = _KNOWN_HEADS[C]
    else:
        raise CheckpointError(f"cannot infer the head count of a width-{C} model without QK-norm: give model_config")
    cfg = dict(n_channels=C, n_layers=len(layers), n_heads=n_heads, mlp_mult=mlp_hidden // C, n_feats=n_feats,
               n_codebooks=rows // codebook_size, codebook_size=codebook_size, bias="adapter.bias" in state,
               qk_norm=gain is not None,
               share_emb=bool(torch.equal(state["tokens_emb.weight"], state["head.weight"])))
    if "registers" in state:
        cfg["n_registers"] = int(state["registers"].shape[1])
    if sorted(layers) != list(range(len(layers))):
        raise CheckpointError(f"layer indices {sorted(layers)} are not 0..{len(layers) - 1}")
    return cfg


def _model_config_fields(given: ModelConfig | Mapping[str, Any] | None) -> dict[str, Any]:
    """A given config (ours, or the authors' `TRIA(**config)` keys) as `ModelConfig` fields."""
    if given is None:
        return {}
    raw = dataclasses.asdict(given) if isinstance(given, ModelConfig) else dict(given)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    out = {}
    for key, value in raw.items():
        if key in _AUTHORS_FIXED:
            if _AUTHORS_FIXED[key] is not None and value != _AUTHORS_FIXED[key]:
                raise CheckpointError(f"model_config {key}={value!r}: only {_AUTHORS_FIXED[key]!r} is implemented")
            continue
        key = _AUTHORS_RENAMES.get(key, key)
        if key not in fields:
            raise CheckpointError(f"model_config has unknown field {key!r}")
        out[key] = value
    return out


def _features_dict(features: Any, n_bands: int) -> tuple[dict, str]:
    """`(features dict, features_id)` for an authors' checkpoint: a preset name, a mapping or a config."""
    from tria.features import RhythmFeatureConfig

    if features is None or isinstance(features, str):
        preset = features or "release"
        if preset not in ("release", "paper"):
            raise CheckpointError(f"unknown feature preset {preset!r} (release or paper)")
        cfg = getattr(RhythmFeatureConfig, preset)(n_bands)
    elif isinstance(features, RhythmFeatureConfig):
        cfg = features
    else:
        try:
            cfg = RhythmFeatureConfig.from_dict(dict(features))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"invalid rhythm-feature config {features}: {e}") from e
    if cfg.n_bands != n_bands:
        raise CheckpointError(f"feature config has {cfg.n_bands} bands but the checkpoint's model has {n_bands}")
    return cfg.to_dict(), cfg.config_id


def from_authors_state_dict(
    state: Mapping[str, torch.Tensor],
    model_config: ModelConfig | Mapping[str, Any] | None = None,
    features: Any = None,
    where: str = "state dict",
) -> dict[str, Any]:
    """An authors' plain state dict as a checkpoint dict of this project's layout.

    Args:
        state: `TRIA(**config).state_dict()` of the authors' code (their names are ours).
        model_config: their `TRIA(**config)` keys or a `ModelConfig`; fields it gives override the
            ones inferred from the tensors (`infer_model_config`), and must agree with the shapes.
        features: the rhythm features the model was trained with: None or "release" (every
            released model), "paper", a mapping or a `RhythmFeatureConfig`.
        where: named in errors.

    Raises:
        CheckpointError: a config that does not fit the tensors.
    """
    from tria.codec import OFFICIAL_ID

    inferred = infer_model_config(state, int(dict(model_config or {}).get("codebook_size", 1024))
                                  if not isinstance(model_config, ModelConfig) else model_config.codebook_size)
    given = _model_config_fields(model_config)
    shape_fields = ("n_channels", "n_layers", "n_feats", "n_codebooks", "mlp_mult", "n_registers", "bias", "qk_norm")
    clash = {k: (given[k], inferred[k]) for k in shape_fields if k in given and k in inferred and given[k] != inferred[k]}
    if given.get("share_emb") and not inferred["share_emb"]:  # tying would silently drop one matrix
        clash["share_emb"] = (True, "embedding and head differ")
    if clash:
        raise CheckpointError(f"{where}: model_config contradicts the tensors (given, found): {clash}")
    config = {**inferred, **given}
    try:
        ModelConfig(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: invalid model config {config}: {e}") from e
    feats, feats_id = _features_dict(features, config["n_feats"])
    return {"format": FORMAT, "origin": AUTHORS_FORMAT, "model_config": config, "model": dict(state),
            "codec_id": OFFICIAL_ID, "features": feats, "features_id": feats_id}


def cache_dir() -> Path:
    """Where released files are kept: `$TRIA_CACHE`, else `~/.cache/tria` (DAC uses `~/.cache/descript`)."""
    return Path(os.environ.get("TRIA_CACHE") or Path.home() / ".cache" / "tria")


def fetch_release(name: str, cache: str | os.PathLike | None = None, url: str | None = None,
                  progress: bool = True) -> Path:
    """The authors' released file `name` (see `RELEASES`), downloaded once into the cache.

    A cached file is used as is (its size is checked; its sha256 was checked when it arrived). A
    download goes to a `.part` file, is checked against the published size and sha256, then renamed.

    Args:
        name: a key of `RELEASES`.
        cache: cache folder (default `cache_dir()`); the file lands in `<cache>/releases/<name>/`.
        url: where to download from (default: the authors' repository at AUTHORS_COMMIT).

    Raises:
        CheckpointError: unknown name, no network, or bytes that do not match the release.
    """
    if name not in RELEASES:
        raise CheckpointError(f"unknown release {name!r}; known: {', '.join(sorted(RELEASES))}")
    rel = RELEASES[name]
    dest = Path(cache or cache_dir()) / "releases" / name / Path(rel.path).name
    if dest.is_file() and dest.stat().st_size == rel.size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")  # DDP ranks may fetch at once
    source = url or RELEASE_URL.format(path=rel.path)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(source, timeout=60) as response, open(part, "wb") as out:
            from tqdm import tqdm

            with tqdm(total=rel.size, unit="B", unit_scale=True, desc=name, disable=not progress, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    except OSError as e:  # URLError, timeouts, refused connections
        part.unlink(missing_ok=True)
        raise CheckpointError(f"could not download the release {name!r} from {source} (no internet?): {e}. "
                              f"Download {rel.path} from github.com/{AUTHORS_REPO} and pass its path") from e
    if part.stat().st_size != rel.size or digest.hexdigest() != rel.sha256:
        got = part.stat().st_size
        part.unlink(missing_ok=True)
        raise CheckpointError(f"the download of {name!r} from {source} is not the release: {got} bytes, "
                              f"sha256 {digest.hexdigest()} (expected {rel.size} bytes, {rel.sha256})")
    os.replace(part, dest)
    return dest


def resolve_checkpoint(spec: str | os.PathLike, **fetch_options: Any) -> Path:
    """A checkpoint argument as a file: an existing path, or a release name fetched into the cache."""
    path = Path(spec)
    if path.exists() or str(spec) not in RELEASES:
        return path
    return fetch_release(str(spec), **fetch_options)


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write ``src`` without its training state (optimiser, data position, RNG): what generation needs,
    about a third of the size. The model, codec_id and features are copied unchanged."""
    ckpt = load_checkpoint(src, map_location="cpu")
    return save_checkpoint(dst, ckpt["model_config"], ckpt["model"], ckpt["codec_id"], ckpt["features"],
                           ckpt["features_id"])


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tria.checkpoint", description="TRIA checkpoint tools.")
    sub = ap.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="copy a checkpoint without its training state (for generation)")
    exp.add_argument("src")
    exp.add_argument("dst")
    args = ap.parse_args(argv)
    try:
        out = export_checkpoint(args.src, args.dst)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB; model, codec_id and features of {args.src})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
