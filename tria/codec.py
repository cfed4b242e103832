"""DAC tokenizer (SPEC section 1): the 44.1 kHz Descript Audio Codec, 9 codebooks x 1024 codes, hop 512.

Weights, chosen by ``Codec.load(weights=...)``:

* ``"official"``: the public 44 kHz 8 kbps release, through descript-audio-codec's own download and
  cache (``~/.cache/descript/dac``). Needs the internet once.
* a path: a DAC weights file (``{"state_dict", "metadata": {"kwargs"}}``, as ``DAC.save`` writes or
  :meth:`Codec.save` writes). Loaded with ``weights_only=True``.
* a name from :data:`NAMED_WEIGHTS`: a weights file shipped with the project. ``"demo-drums"`` is the
  demo codec (2.0M parameters, trained here on the demo's Hydrogen kits by
  ``python -m tria.codec_train conf/codec/demo_drums.yaml``; see ``tria/weights/README.md``). Its
  ``codec_id`` is ``dac-<name>-<digest>``, so a checkpoint trained on its tokens finds it again with
  no path. The architecture comes from the file; ``size`` does not apply.
* ``"random"``: the same architecture with a seeded random init. Tokens from it are not
  meaningful audio codes; it exists so tests and offline demos run the real code path.

``size="tiny"`` builds a much smaller encoder/decoder of the same class with the same token
layout (9 x 1024, hop 512, 44.1 kHz), for fast CPU tests. Every load prints one line saying which
weights are in use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

import tria  # noqa: F401  (registers the torchaudio placeholder before dac is imported)
from tria.audio import resample
from tria.features import rms_db

log = logging.getLogger(__name__)

SAMPLE_RATE = 44_100
HOP_LENGTH = 512
N_CODEBOOKS = 9
CODEBOOK_SIZE = 1024
TARGET_RMS_DB = -16.0  # the authors' tokenizer normalises RMS (not LUFS) to -16 dBFS
OFFICIAL_ID = "dac-44khz-8kbps-0.0.1"
WEIGHTS_DIR = Path(__file__).parent / "weights"
# Weights files shipped in the repository, by name (``codec.weights=<name>``); each is described in
# tria/weights/README.md. "demo-drums": the demo codec, trained here on the demo's Hydrogen kits
# (conf/codec/demo_drums*.yaml); not the official DAC.
NAMED_WEIGHTS: dict[str, Path] = {"demo-drums": WEIGHTS_DIR / "dac_demo_drums.pth"}

# Architecture of the official 44 kHz 8 kbps model, and a small one with the same token layout.
DAC_KWARGS = {
    "full": dict(encoder_dim=64, encoder_rates=[2, 4, 8, 8], latent_dim=None, decoder_dim=1536,
                 decoder_rates=[8, 8, 4, 2], n_codebooks=N_CODEBOOKS, codebook_size=CODEBOOK_SIZE,
                 codebook_dim=8, quantizer_dropout=0.0, sample_rate=SAMPLE_RATE),
    "tiny": dict(encoder_dim=4, encoder_rates=[2, 4, 8, 8], latent_dim=32, decoder_dim=16,
                 decoder_rates=[8, 8, 4, 2], n_codebooks=N_CODEBOOKS, codebook_size=CODEBOOK_SIZE,
                 codebook_dim=8, quantizer_dropout=0.0, sample_rate=SAMPLE_RATE),
}


def _build_dac(kwargs: dict):
    import dac

    with warnings.catch_warnings():  # DAC uses the deprecated torch weight_norm; harmless here
        warnings.simplefilter("ignore", FutureWarning)
        return dac.DAC(**kwargs)


class Codec:
    """Batched DAC encode/decode with the authors' level normalisation and resampling."""

    sample_rate = SAMPLE_RATE
    hop_length = HOP_LENGTH
    n_codebooks = N_CODEBOOKS
    codebook_size = CODEBOOK_SIZE

    def __init__(self, model: torch.nn.Module, config_id: str, description: str):
        self.model = model.eval()
        self.config_id = config_id
        self.description = description

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, weights: str | os.PathLike = "random", size: str = "full", device: str | torch.device = "cpu",
             seed: int = 0, quiet: bool = False) -> "Codec":
        """Build the codec. See the module docstring for ``weights`` and ``size``.

        Raises:
            ValueError: unknown size, or a weights file that is missing or not a DAC state dict.
        """
        if size not in DAC_KWARGS:
            raise ValueError(f"codec size must be one of {sorted(DAC_KWARGS)}, got {size!r}")
        weights = str(weights)
        if weights == "random":
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
            try:
                model = _build_dac(DAC_KWARGS[size])
            finally:
                torch.random.set_rng_state(gen_state)
            codec = cls(model, codec_id("random", size, seed),
                        f"RANDOM-INIT DAC ({size}, seed {seed}): tokens are not meaningful audio codes")
        else:
            if weights == "official":
                path = cls._download_official()
                config_id, what = OFFICIAL_ID, f"official DAC 44kHz 8kbps weights ({path})"
            elif weights in NAMED_WEIGHTS:
                path = NAMED_WEIGHTS[weights]
                config_id = codec_id(weights)
                what = f"the shipped {weights!r} DAC weights ({path}; trained here, not the official DAC)"
            else:
                path = Path(weights)
                config_id, what = codec_id(path), f"DAC weights from {path}"
            model = _load_dac_file(path)
            codec = cls(model, config_id, what)
        codec.model.to(device)
        if not quiet:
            print(f"[tria.codec] using {codec.description} [codec_id={codec.config_id}]", flush=True)
        return codec

    @staticmethod
    def _download_official() -> Path:
        import dac

        try:
            return Path(dac.utils.download(model_type="44khz", model_bitrate="8kbps"))
        except Exception as e:  # network errors surface as many types; say what to do instead
            raise RuntimeError(
                "could not download the official DAC weights (no internet?). Download "
                "weights_44khz_8kbps_0.0.1.pth elsewhere and pass its path as the codec weights, "
                f"or use weights='random' for an offline test run. Cause: {e}") from e

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights in DAC's file layout (loadable by :meth:`load` and ``dac.DAC.load``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {k: getattr(self.model, k, None) for k in ("encoder_dim", "encoder_rates", "latent_dim",
                                                           "decoder_dim", "decoder_rates", "sample_rate")}
        q = self.model.quantizer
        kwargs.update(n_codebooks=q.n_codebooks, codebook_size=q.codebook_size,
                      codebook_dim=q.codebook_dim[0] if isinstance(q.codebook_dim, list) else q.codebook_dim,
                      quantizer_dropout=float(q.quantizer_dropout))
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({"state_dict": self.model.state_dict(), "metadata": {"kwargs": kwargs}}, tmp)
        os.replace(tmp, path)
        return path

    # -- tokens -------------------------------------------------------------------------------

    def n_frames(self, n_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
        """Token frames for a clip of ``n_samples`` at ``sample_rate`` (6.0 s at 44.1 kHz -> 516)."""
        n = n_samples if sample_rate == SAMPLE_RATE else int(n_samples * SAMPLE_RATE // sample_rate)
        return n // HOP_LENGTH

    @torch.inference_mode()
    def encode(self, audio: torch.Tensor, sample_rate: int, batch_size: int = 16) -> torch.Tensor:
        """Audio to codes.

        Args:
            audio: (B, C, N) float. Channels are folded into the batch (the codec is mono), so the
                result has B*C rows; pass mono (B, 1, N) for one row per clip.
            sample_rate: rate of ``audio``; resampled to 44.1 kHz when different.
            batch_size: clips per forward pass (bounds memory).

        Returns:
            (B*C, 9, T) int64 codes in [0, 1024), T = N_44k // 512.
        """
        x = self._prepare(audio, sample_rate)
        out = []
        for chunk in x.split(batch_size):
            z = self.model.encoder(chunk.to(self.device))
            _, codes, *_ = self.model.quantizer(z, None)  # (b, 9, T)
            out.append(codes.cpu())
        return torch.cat(out)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Codes (B, 9, T) int to audio (B, 1, T*512) float at 44.1 kHz (level as the codec outputs it)."""
        if codes.dim() != 3 or codes.shape[1] != N_CODEBOOKS:
            raise ValueError(f"codes must have shape (B, {N_CODEBOOKS}, T), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= CODEBOOK_SIZE):
            raise ValueError(f"codes must lie in [0, {CODEBOOK_SIZE}), got [{int(codes.min())}, {int(codes.max())}]")
        out = []
        for chunk in codes.long().split(batch_size):
            z, _, _ = self.model.quantizer.from_codes(chunk.to(self.device))
            out.append(self.model.decoder(z).cpu())
        return torch.cat(out)

    def _prepare(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if not isinstance(audio, torch.Tensor) or audio.dim() != 3:
            shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
            raise ValueError(f"audio must be a tensor of shape (B, C, N), got {shape}")
        if audio.numel() == 0:
            raise ValueError(f"audio is empty: shape {tuple(audio.shape)}")
        if not torch.isfinite(audio).all():
            raise ValueError("audio contains NaN or Inf samples")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if self.n_frames(audio.shape[-1], sample_rate) < 1:
            raise ValueError(f"audio too short to encode: {audio.shape[-1]} samples at {sample_rate} Hz "
                             f"(needs at least {HOP_LENGTH} samples at 44.1 kHz)")
        x = audio.float()
        x = normalize_rms(x, TARGET_RMS_DB)
        B, C, N = x.shape
        x = x.reshape(B * C, 1, N)  # fold channels into the batch
        return resample(x, sample_rate, SAMPLE_RATE)


@dataclass(frozen=True)
class CodecConfig:
    """Which codec a pipeline or trainer uses (see :meth:`Codec.load`)."""

    weights: str = "random"  # "official" | "random" | a NAMED_WEIGHTS name | a path
    size: str = "full"  # "tiny" for tests and CPU demos
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available
    batch_size: int = 8

    @property
    def config_id(self) -> str:
        return codec_id(self.weights, self.size, self.seed)

    def load(self, device: str | None = None, quiet: bool = False) -> "Codec":
        return Codec.load(self.weights, size=self.size, device=resolve_device(device or self.device), seed=self.seed,
                          quiet=quiet)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; a CUDA device without CUDA is a clear error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA device")
    return device


def codec_id(weights: str | os.PathLike, size: str = "full", seed: int = 0) -> str:
    """The ``config_id`` that :meth:`Codec.load` gives these arguments, without building the model."""
    weights = str(weights)
    if weights == "random":
        return f"dac-random-{size}-s{seed}"
    if weights == "official":
        return OFFICIAL_ID
    if weights in NAMED_WEIGHTS:
        return f"dac-{weights}-{_file_digest(NAMED_WEIGHTS[weights])}"
    return f"dac-file-{_file_digest(Path(weights))}"


def normalize_rms(audio: torch.Tensor, target_db: float) -> torch.Tensor:
    """Gain each item (pooled over channels and time) so its RMS is ``target_db`` dBFS (SPEC 1, steps 1-2)."""
    return audio * torch.pow(10.0, (target_db - rms_db(audio)) / 20.0)[:, None, None]


def _file_digest(path: Path) -> str:
    if not path.is_file():
        raise ValueError(f"codec weights file not found: {path}")
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:10]


def _load_dac_file(path: Path) -> torch.nn.Module:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        kwargs = dict(blob["metadata"]["kwargs"])
        state = blob["state_dict"]
    except Exception as e:
        raise ValueError(f"{path} is not a DAC weights file (expected a dict with 'state_dict' and "
                         f"'metadata.kwargs'): {e}") from e
    model = _build_dac(kwargs)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{path}: weights miss {len(missing)} tensors, e.g. {missing[:3]}")
    if unexpected:
        log.warning("%s: ignoring %d unexpected tensors, e.g. %s", path, len(unexpected), unexpected[:3])
    return model


_id_of_weights = codec_id  # `codec_from_id`'s argument below shadows the function's name


def codec_from_id(codec_id: str, path: str | os.PathLike | None = None,
                  device: str | torch.device = "cpu") -> Codec:
    """Rebuild the codec that a checkpoint or shard names by its ``codec_id``.

    * ``"dac-random-<size>-s<seed>"``: the seeded random init of that size (no file needed).
    * ``"dac-44khz-8kbps-0.0.1"``: the official weights; from ``path`` when given (a local copy,
      for machines without internet), else through DAC's download cache.
    * ``"dac-<name>-<digest>"``: the shipped weights :data:`NAMED_WEIGHTS` ``[name]``, whose digest
      must equal ``<digest>`` (``path`` is not needed).
    * ``"dac-file-<digest>"``: the weights file ``path``, whose digest must equal ``<digest>``, so a
      model is never decoded with a codec other than the one its tokens came from.

    Raises:
        ValueError: unknown id form, a file id without ``path``, a ``path`` whose digest differs,
            or a ``path`` given for a random-init codec (which uses no file).
    """
    cid = str(codec_id)
    if cid.startswith("dac-random-"):
        size, _, seed = cid[len("dac-random-"):].rpartition("-s")
        if size not in DAC_KWARGS or not seed.isdigit():
            sizes = "|".join(DAC_KWARGS)
            raise ValueError(f"malformed codec id {cid!r}: expected 'dac-random-<{sizes}>-s<seed>'")
        if path is not None:
            raise ValueError(f"codec {cid} is a random init and uses no weights file, but {path} was given")
        return Codec.load("random", size=size, device=device, seed=int(seed))
    if cid == OFFICIAL_ID:
        if path is None:
            return Codec.load("official", device=device)
        codec = Codec(_load_dac_file(Path(path)), OFFICIAL_ID, f"official DAC 44kHz 8kbps weights ({path})")
        codec.model.to(device)
        print(f"[tria.codec] using {codec.description} [codec_id={codec.config_id}]", flush=True)
        return codec
    for name in NAMED_WEIGHTS:
        if cid.startswith(f"dac-{name}-"):
            have = _id_of_weights(name)
            if have != cid:
                raise ValueError(f"the shipped {name!r} codec weights have id {have}, but the checkpoint needs {cid}: "
                                 "its tokens came from another version of that file")
            return Codec.load(name, device=device)
    if cid.startswith("dac-file-"):
        if path is None:
            raise ValueError(f"codec {cid} is a weights file: pass that file (--codec-weights PATH)")
        have = _id_of_weights(path)
        if have != cid:
            raise ValueError(f"codec weights {path} have id {have}, but the checkpoint needs {cid}: "
                             "a different codec than the one its tokens came from")
        return Codec.load(path, device=device)
    names = ", ".join(f"'dac-{n}-<digest>'" for n in NAMED_WEIGHTS)
    raise ValueError(f"unknown codec id {cid!r} (expected 'dac-random-<size>-s<seed>', {OFFICIAL_ID!r}, {names} "
                     "or 'dac-file-<digest>')")
