"""Separate stage: Demucs drums from full mixes (MTG-Jamendo songs, MUSDB mixtures), one model per Ray actor.

Input rows are "mix" stems; for each one the actor writes the Demucs ``drums`` source to
``<out_dir>/<source>/<split>/<track dir>/drums.wav`` (44.1 kHz, 16-bit, stereo) and returns a new
``separated``-tier drum stem whose ``parent_stem_id`` is the mix, or a reject row. One bad file never
stops the batch. The output is written to a temporary name and renamed, so a file under the final name
is complete; a re-run finds it, checks its format and length, and skips the separation.

Weights (``SeparateConfig.weights``):

* ``"official"``: ``demucs.pretrained.get_model(model)``, which downloads (HuggingFace hub, then the
  legacy repo) on first use and caches in the torch hub folder.
* a folder: ``get_model(model, repo=Path(folder))``, offline, the folder holding ``<model>.th`` packages
  or a bag ``<model>.yaml`` (what ``demucs`` itself reads; copy the official files there on an offline
  cluster).
* ``"random"``: a small randomly initialised ``HTDemucs`` (the same class as the official model) saved
  as a package in ``cache_dir`` and loaded through the same ``get_model(model, repo=...)`` path. For
  tests and offline demos only: its "drums" are noise-shaped garbage, and the actor says so.

Driver side (the job driver is the catalogue's single writer; ``pipelines.resources`` decides what
each actor asks Ray for and how far the pool may grow)::

    from pipelines.resources import ActorPoolConfig, plan_pool

    ds = ray.data.from_items([s.to_dict() for s in mix_stems])
    plan = plan_pool("separate", ActorPoolConfig(), ray.cluster_resources(), device=config.device)
    out = ds.map_batches(Separator, fn_constructor_args=(config,), batch_size=1, **plan.map_batches_args())
    for batch in out.iter_batches(batch_format="numpy"):
        stems, rejects = stem_rows_from_batch(batch, run_id)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import soundfile as sf
import torch

import tria  # noqa: F401  (registers the torchaudio placeholder before demucs/dac imports)
from pipelines import fs
from pipelines.resources import actor_device
from pipelines.rows import RejectRow, StemRow, stable_id
from pipelines.sources.base import stem_path
from tria.audio import AudioError, check_audio, resample

STAGE = "separate"
OUT_SAMPLE_RATE = 44_100  # the codec's rate (SPEC): every stem downstream is read at 44.1 kHz
OUT_STEM = "drums_demucs"  # stem name of the separated drums (the file is drums.wav)
SOURCES = ("drums", "bass", "other", "vocals")  # htdemucs' sources, in its order

# The "random" model: HTDemucs with the official architecture shrunk so that 3 s of audio separate in
# well under a second on one CPU core. depth stays 4 because the cross-transformer attends over
# (freq x time) tokens: with fewer layers the frequency axis is not reduced enough and attention cost
# explodes (depth 2: ~20k tokens per 4 s). dconv_comp=4 keeps the residual branches non-empty at 4 channels.
RANDOM_KWARGS: dict[str, Any] = dict(channels=4, depth=4, t_layers=1, t_heads=2, t_hidden_scale=1.0,
                                     dconv_comp=4, dconv_depth=1, segment=4)


@dataclass(frozen=True)
class SeparateConfig:
    """What to separate with and where to write.

    Attributes:
        model: Demucs model name (a bag name such as "htdemucs", "htdemucs_ft", or a signature).
        weights: "official", "random", or a local folder used as a Demucs repo (see module docstring).
        device: "auto" (cuda when Ray gave the actor a GPU that torch sees, else cpu), "cpu", "cuda" or
            "cuda:N" (what the actors ask Ray for: ``ray.separate`` in the pipeline config).
        segment_s: chunk length for long files; None uses the model's own (7.8 s for htdemucs, the
            longest a transformer model may take).
        shifts: random time-shift averaging (demucs' --shifts); 0 is one pass, each shift costs one more.
        overlap: overlap between chunks, as a fraction of a chunk.
        batch_size: mixes per ``__call__`` for callers that batch; ``pipelines.run`` passes one mix per
            batch, so that results stream out and an actor holds one mix at a time.
        out_dir: root of the separated stems (local path or URI).
        cache_dir: where the "random" weights package is written.
        seed: seed of the "random" weights.
        max_duration_s: longer mixes are rejected (a broken header, or a DJ set that does not fit memory).
    """

    model: str = "htdemucs"
    weights: str = "official"
    device: str = "auto"
    segment_s: float | None = None
    shifts: int = 0
    overlap: float = 0.25
    batch_size: int = 4
    out_dir: str = "data/separated"
    cache_dir: str = ".cache/demucs"
    seed: int = 0
    max_duration_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.model or "/" in self.model:
            raise ValueError(f"SeparateConfig.model must be a Demucs model name, got {self.model!r}")
        if not self.weights:
            raise ValueError("SeparateConfig.weights must be 'official', 'random' or a folder, got ''")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"SeparateConfig.device must be 'auto', 'cpu' or 'cuda[:N]', "
                             f"got {self.device!r}")
        if self.segment_s is not None and self.segment_s <= 0:
            raise ValueError(f"SeparateConfig.segment_s must be > 0 or None, got {self.segment_s}")
        if self.shifts < 0:
            raise ValueError(f"SeparateConfig.shifts must be >= 0, got {self.shifts}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"SeparateConfig.overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"SeparateConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.max_duration_s <= 0:
            raise ValueError(f"SeparateConfig.max_duration_s must be > 0, got {self.max_duration_s}")


# ----------------------------------------------------------------------------------------------- weights


def build_random_model(seed: int = 0) -> torch.nn.Module:
    """A small random-init ``HTDemucs`` (4 sources, 44.1 kHz stereo), deterministic in ``seed``."""
    from demucs.htdemucs import HTDemucs

    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        return HTDemucs(sources=list(SOURCES), **RANDOM_KWARGS).eval()


def save_package(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save ``model`` as the package dict Demucs' ``load_model`` reads (klass, args, kwargs, state).

    Written to a temporary name and renamed: several actors may build the same package at once.
    """
    args, kwargs = model._init_args_kwargs  # recorded by demucs' @capture_init
    package = {"klass": model.__class__, "args": args, "kwargs": kwargs,
               "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(package, tmp)
    os.replace(tmp, path)
    return path


def random_model_repo(config: SeparateConfig) -> Path:
    """The Demucs repo folder holding ``<model>.th`` with the "random" weights (created if missing)."""
    if "-" in config.model:  # demucs' LocalRepo reads "<sig>-<checksum>.th": a dash would be a checksum
        raise ValueError(f"random weights need a model name without '-', got {config.model!r}")
    spec = stable_id(json.dumps(RANDOM_KWARGS, sort_keys=True), SOURCES, config.seed, n=8)
    repo = Path(config.cache_dir) / f"random_seed{config.seed}_{spec}"
    if not (repo / f"{config.model}.th").is_file():
        save_package(build_random_model(config.seed), repo / f"{config.model}.th")
    return repo


def load_model(config: SeparateConfig) -> tuple[torch.nn.Module, str]:
    """Load the model named by ``config``; returns ``(model in eval mode, one-line description)``.

    Raises:
        ValueError: ``weights`` is not "official"/"random"/an existing folder, the folder lacks the model,
            or the model has no "drums" source.
    """
    from demucs.pretrained import ModelLoadingError, get_model

    name = config.model
    if config.weights == "official":
        model = get_model(name)
        what = f"Demucs {name!r}: official pretrained weights"
    elif config.weights == "random":
        repo = random_model_repo(config)
        model = get_model(name, repo=repo)
        what = (f"RANDOM-INIT HTDemucs (tests only): separated drums are not meaningful "
                f"(seed {config.seed}, package {repo / (name + '.th')})")
    else:
        repo = Path(config.weights).expanduser()
        if not repo.is_dir():  # demucs would sys.exit() here; say what is wrong instead
            raise ValueError(f"SeparateConfig.weights={config.weights!r} is neither 'official', 'random' "
                             "nor an existing folder")
        try:
            model = get_model(name, repo=repo)
        except ModelLoadingError as e:
            found = sorted(p.name for p in repo.iterdir() if p.suffix in (".th", ".yaml"))
            raise ValueError(f"Demucs model {name!r} not found in {repo} (it holds {found}): {e}") from e
        what = f"Demucs {name!r}: weights from local folder {repo}"
    if "drums" not in model.sources:
        raise ValueError(f"Demucs model {name!r} has no 'drums' source (sources: {model.sources})")
    n_params = sum(p.numel() for p in model.parameters())
    return model.eval(), f"{what}; {n_params:,} parameters"


def max_segment_s(model: torch.nn.Module) -> float:
    """Longest chunk the model accepts: transformer models only take up to their training segment."""
    from demucs.htdemucs import HTDemucs

    if hasattr(model, "max_allowed_segment"):  # a BagOfModels
        return float(model.max_allowed_segment)
    return float(model.segment) if isinstance(model, HTDemucs) else float("inf")


# ----------------------------------------------------------------------------------------------- audio


def output_path(out_dir: str, source: str, split: str, track: str) -> str:
    """``<out_dir>/<source>/<split>/<track dir>/drums.wav`` (the common stem layout, one root per source)."""
    rel = stem_path("", split, track, "drums").as_posix()
    return fs.join(out_dir, source, rel)


def output_length(n_samples: int, sample_rate: int) -> int:
    """Samples at 44.1 kHz of a mix of ``n_samples`` at ``sample_rate`` (what is written and checked)."""
    return n_samples * OUT_SAMPLE_RATE // sample_rate


def _open(path: str) -> Any:
    # Object stores: the bytes in memory (libsndfile needs seeks; mixes are tens of MB at most).
    return io.BytesIO(fs.read_bytes(path)) if fs.is_uri(path) else path


def mix_info(path: str) -> tuple[int, int]:
    """``(sample_rate, n_samples)`` of a mix from its header. Raises AudioError("unreadable")."""
    try:
        info = sf.info(_open(path))
    except Exception as e:  # libsndfile raises several types for broken files
        raise AudioError("unreadable", f"{path}: {type(e).__name__}: {e}") from e
    if info.frames <= 0:
        raise AudioError("empty", f"{path} has no samples")
    return info.samplerate, info.frames


def read_stereo(path: str) -> tuple[np.ndarray, int]:
    """Read a mix as stereo float32 ``(2, N)``: mono is duplicated, more than 2 channels are downmixed."""
    try:
        data, sr = sf.read(_open(path), dtype="float32", always_2d=True)  # (N, C)
    except Exception as e:
        raise AudioError("unreadable", f"{path}: {type(e).__name__}: {e}") from e
    audio = np.ascontiguousarray(data.T)
    check_audio(audio, path)
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    elif audio.shape[0] > 2:  # 5.1 mixes and the like: a mono downmix on both sides
        audio = np.repeat(audio.mean(axis=0, keepdims=True), 2, axis=0)
    return audio, sr


def wav_bytes(audio: np.ndarray, sample_rate: int = OUT_SAMPLE_RATE) -> bytes:
    """16-bit PCM wav of ``audio`` (C, N) float, clipped to [-1, 1]."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0).T, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def existing_output(path: str, n_expected: int) -> tuple[int, int, str] | None:
    """``(n_channels, n_samples, sha256)`` of a complete earlier output, else None.

    Complete means: readable, 44.1 kHz, exactly ``n_expected`` samples. The rename makes a partial file
    under the final name impossible from this stage; the check also catches a file from another mix.
    """
    if not fs.exists(path):
        return None
    try:
        data = fs.read_bytes(path)
        info = sf.info(io.BytesIO(data))
    except Exception:
        return None
    if info.samplerate != OUT_SAMPLE_RATE or info.frames != n_expected:
        return None
    return info.channels, info.frames, hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------- actor

_COLUMNS = ("kind", "item", "source", "track", "stem", "role", "tier", "split", "licence", "path",
            "sample_rate", "n_channels", "n_samples", "raw_ids_json", "parent_stem_id", "sha256", "skipped",
            "reason", "detail")


class Separator:
    """Callable Ray actor class: mix stems in, one separated drum stem (or one reject) per mix out.

    The model is loaded once per actor. Output columns: kind ("stem" or "reject"), item (the mix's
    stem id), the new StemRow's fields (raw ids as a JSON list in ``raw_ids_json``), skipped (True when
    an earlier complete output was reused), and reason/detail for rejects.
    """

    def __init__(self, config: SeparateConfig):
        self.config = config
        self.device = actor_device(config.device, "separate")
        self.model, self.description = load_model(config)
        self.drums = self.model.sources.index("drums")
        limit = max_segment_s(self.model)
        if config.segment_s is not None and config.segment_s > limit:
            raise ValueError(f"SeparateConfig.segment_s={config.segment_s} is longer than the {limit:.2f} s "
                             f"that {config.model!r} was trained on (transformer models cannot take more)")
        # One line in the worker log that says which weights produced the data.
        print(f"[separate] {self.description}; device {self.device}", flush=True)

    def separate(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Drums of a stereo mix.

        Args:
            audio: (2, N) float32 at ``sample_rate``.

        Returns:
            (2, output_length(N, sample_rate)) float32 at 44.1 kHz.
        """
        model_sr = int(self.model.samplerate)
        mix = resample(torch.from_numpy(audio), sample_rate, model_sr)
        # Demucs' own normalisation (demucs.separate): zero mean, unit std of the mono reference.
        ref = mix.mean(0)
        mean, std = ref.mean(), ref.std().clamp_min(1e-8)  # clamp: a silent mix would divide by zero
        from demucs.apply import apply_model

        with torch.no_grad():
            out = apply_model(self.model, ((mix - mean) / std)[None], shifts=self.config.shifts, split=True,
                              overlap=self.config.overlap, segment=self.config.segment_s, device=self.device)
        drums = out[0, self.drums].cpu() * std + mean  # (2, N')
        drums = resample(drums, model_sr, OUT_SAMPLE_RATE)
        n = output_length(audio.shape[-1], sample_rate)
        drums = torch.nn.functional.pad(drums[..., :n], (0, max(0, n - drums.shape[-1])))
        if not torch.isfinite(drums).all():
            raise RuntimeError("the model produced NaN/Inf samples")
        return drums.numpy()

    def process(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One mix row to one output row (a stem or a reject); never raises for a bad file."""
        source, track, split = str(row["source"]), str(row["track"]), str(row["split"])
        mix_id = str(row.get("stem_id") or stable_id(source, track, str(row.get("stem", "mix"))))
        out = {k: "" for k in _COLUMNS} | dict(
            item=mix_id, source=source, track=track, split=split, licence=str(row.get("licence", "")),
            raw_ids_json=json.dumps(_raw_ids(row.get("raw_ids"))), parent_stem_id=mix_id, skipped=False,
            sample_rate=0, n_channels=0, n_samples=0)
        role = str(row.get("role", "mix"))
        if role != "mix":
            return out | dict(kind="reject", reason="not_a_mix", detail=f"role is {role!r}, expected 'mix'")
        path = str(row["path"])
        dest = output_path(self.config.out_dir, source, split, track)
        try:
            sr, n = mix_info(path)
            if n > self.config.max_duration_s * sr:
                return out | dict(kind="reject", reason="too_long",
                                  detail=f"{n / sr:.0f} s > {self.config.max_duration_s:.0f} s")
            n_out = output_length(n, sr)
            done = existing_output(dest, n_out)
            if done is None:
                audio, sr = read_stereo(path)
                drums = self.separate(audio, sr)  # (2, n_out) unless the header lied about the length
                data = wav_bytes(drums)
                fs.write_bytes(dest, data)  # temporary name, then rename
                done = (drums.shape[0], drums.shape[1], hashlib.sha256(data).hexdigest())
            else:
                out["skipped"] = True
        except AudioError as e:
            return out | dict(kind="reject", reason="unreadable", detail=str(e)[:500])
        except Exception as e:  # CUDA OOM, a model error, a full disk: this mix fails, the batch goes on
            detail = f"{type(e).__name__}: {e}"[:500]
            return out | dict(kind="reject", reason="separation_failed", detail=detail)
        n_channels, n_samples, digest = done
        return out | dict(kind="stem", stem=OUT_STEM, role="drums", tier="separated", path=dest,
                          sample_rate=OUT_SAMPLE_RATE, n_channels=n_channels, n_samples=n_samples,
                          sha256=digest)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data batch function. Input columns: stem_id, source, track, stem, path, split, licence,
        and optionally role and raw_ids."""
        n = len(batch["path"])
        rows = [self.process({k: v[i] for k, v in batch.items()}) for i in range(n)]
        return {k: np.asarray([r[k] for r in rows]) for k in _COLUMNS}


def _raw_ids(value: Any) -> list[str]:
    """Raw ids from a batch cell: a list/array (Arrow list column), a JSON string, or nothing."""
    if value is None:
        return []
    if isinstance(value, (str, np.str_)):
        value = str(value)
        if not value:
            return []
        try:
            parsed = json.loads(value)
        except ValueError:
            return [value]
        return [str(v) for v in parsed] if isinstance(parsed, list) else [str(parsed)]
    return [str(v) for v in value]


def stem_rows_from_batch(batch: Mapping[str, np.ndarray],
                         run_id: str = "") -> tuple[list[StemRow], list[RejectRow]]:
    """Catalogue rows of a :class:`Separator` output batch (built on the driver, the single writer)."""
    stems, rejects = [], []
    for i in range(len(batch["kind"])):
        cell = {k: batch[k][i] for k in _COLUMNS}
        if cell["kind"] == "stem":
            stems.append(StemRow(
                source=str(cell["source"]), track=str(cell["track"]), stem=str(cell["stem"]),
                role=str(cell["role"]), tier=str(cell["tier"]), split=str(cell["split"]),
                licence=str(cell["licence"]), path=str(cell["path"]), sample_rate=int(cell["sample_rate"]),
                n_channels=int(cell["n_channels"]), n_samples=int(cell["n_samples"]),
                raw_ids=tuple(json.loads(str(cell["raw_ids_json"]) or "[]")),
                parent_stem_id=str(cell["parent_stem_id"]), sha256=str(cell["sha256"])))
        else:
            rejects.append(RejectRow(what="stem", item=str(cell["item"]), stage=STAGE,
                                     reason=str(cell["reason"]), detail=str(cell["detail"]),
                                     source=str(cell["source"]), run_id=run_id))
    return stems, rejects
