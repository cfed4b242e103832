"""Objective evaluation of TRIA checkpoints on an evaluation set (docs/evaluation.md).

    python -m tria.evaluate --checkpoint runs/x/checkpoints/best.pt --set conf/eval/demo.yaml
    python -m tria.evaluate --checkpoint a.pt b.pt --set conf/eval/musdb_avp.yaml --out runs/eval/cmp \\
        --codec-weights ~/weights/dac_44khz_8kbps.pth --mlflow-uri http://127.0.0.1:5000 \\
        seeds=[0,1] --sweep guidance_scale=0,1,2 iterations=4,8

An evaluation set (YAML, :class:`EvalSetConfig`) names rhythm prompts (an audio folder: tapping,
beatboxing, the demo gestures) and timbre prompts (test-split drum excerpts from the catalogue, or
a folder), how many pairs, the seeds and the sampler. For every pair, seed, checkpoint and sweep
condition the harness generates drums with :func:`tria.generate.generate_drums`, then measures
rhythm adherence (onset F1, rhythm-feature correlation), timbre adherence (embedding cosine) and,
per condition, the Frechet distance of the outputs to a reference drum set (:mod:`tria.metrics`).

It writes to ``--out`` (default ``runs/eval/<set name>``): ``pairs.csv`` (one row per output),
``summary.csv`` (per checkpoint and condition: means with bootstrap 95% CIs, FD), ``results.md``
(both tables), ``results.json``, ``eval_set.yaml`` and a few audio examples. With ``--mlflow-uri`` it
logs one MLflow run per checkpoint and condition; when the set names a catalogue it adds one
``eval_runs`` row per checkpoint and condition.

Overrides (``key=value``, before ``--sweep``) change the set (``max_pairs=4 sampler.top_p=0.9``).
``--sweep k=v1,v2 ...`` runs the cross product of the listed values; a bare sampler field name
(``guidance_scale``) means ``sampler.<name>``. Swept keys become columns of the tables.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tria.audio import AudioError, load_audio, resample, save_audio
from tria.checkpoint import load_checkpoint
from tria.codec import resolve_device
from tria.config import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from tria.features import RhythmFeatureConfig, rhythm_features
from tria.generate import MIN_RHYTHM_S, MIN_TIMBRE_S, LoadedCheckpoint, generate_drums, load_for_generation
from tria.metrics import (
    OnsetConfig,
    bootstrap_ci,
    cosine_similarity,
    detect_onsets,
    embed_clips,
    feature_correlation,
    frechet_distance,
    get_embedder,
    onset_f1,
)
from tria.sampling import SamplerConfig

SR = 44_100
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")
SWEEPABLE = ("sampler.", "seeds", "onset_window_s", "onset.")
PER_OUTPUT_METRICS = ("onset_f1", "onset_precision", "onset_recall", "rhythm_corr", "timbre_cosine")


# ----------------------------------------------------------------------------------------------
# The evaluation set


@dataclass(frozen=True)
class AudioSetConfig:
    """Where a set of clips comes from: an audio folder, or drum excerpts of the catalogue.

    Attributes:
        folder: audio files under this folder (recursive, sorted by relative path).
        split: instead of a folder, excerpts of stems in this catalogue split ("test"), read from the
            stem files at the excerpt offsets. Role "drums" only.
        catalogue: the catalogue to read excerpts from; default the set's ``catalogue``.
        sources: catalogue only: keep these sources (e.g. [musdb18hq]); empty = all.
        per_track: catalogue only: at most this many excerpts per track (0 = no limit).
        max_items: keep the first n clips (0 = all). Excerpts are ordered by excerpt id, a hash, so
            the first n spread over tracks.
        max_seconds: read at most this long from each clip (0 = whole file / whole excerpt).
        annotations: rhythm prompts only: a suffix such as ".csv"; ``<file stem><suffix>`` next to
            each audio file holds reference onset times (first column, seconds), used as the onset
            reference instead of the onsets detected in the prompt.
    """

    folder: str | None = None
    split: str | None = None
    catalogue: str | None = None
    sources: tuple[str, ...] = ()
    per_track: int = 0
    max_items: int = 0
    max_seconds: float = 0.0
    annotations: str | None = None

    def __post_init__(self) -> None:
        if (self.folder is None) == (self.split is None):
            raise ValueError("an audio set needs exactly one of `folder` or `split` (catalogue excerpts)")
        if self.max_items < 0 or self.per_track < 0 or self.max_seconds < 0:
            raise ValueError("max_items, per_track and max_seconds must be >= 0")


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which embedding model measures timbre (see tria.metrics.get_embedder).

    Attributes:
        name: "spectral" (no weights), "vggish" or "clap" (need ``options.checkpoint``: a local file).
        standardize: standardise embeddings with the reference set's mean/std before cosine and FD;
            None = the embedder's default (True for spectral, False for learned embeddings).
        options: keyword arguments of the embedder factory.
    """

    name: str = "spectral"
    standardize: bool | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSetConfig:
    """An evaluation set: prompts, pairing, seeds, sampler and metric settings.

    Attributes:
        name: names the output folder and the MLflow runs.
        catalogue: DuckDB catalogue for catalogue-based prompt sets, and where ``eval_runs`` rows go.
        record_in_catalogue: add the ``eval_runs`` rows (when ``catalogue`` is set).
        rhythm, timbre: the prompt sets; every rhythm x timbre pair is a candidate.
        reference: the real-drums set the Frechet distance compares to; None = the timbre set,
            whole excerpts (not cut to the prompt length).
        max_pairs: keep this many pairs, drawn without replacement with ``pair_seed`` (0 = all).
        seeds: one output per seed and pair (the sampler's seed).
        sampler: decoding settings (``preset: app`` etc. work).
        max_duration_s, timbre_s: the buffer and the timbre prefix (SPEC 6.1: 6 s and 2 s); the
            rhythm prompt is cut to max_duration_s minus the timbre prompt's length.
        filter_inputs: band-limit rhythm prompts to 250 Hz - 8 kHz before their features are taken
            (the app's "Filter Inputs"); metrics still compare with the unfiltered prompt.
        loudness_db: outputs are normalised to this loudness (LUFS) and peak-limited, as the app does.
        onset, onset_window_s: onset detector settings and the F1 tolerance (+- seconds).
        embedding: the timbre embedding.
        n_bootstrap, fd_bootstrap, ci_level: bootstrap draws for the means and for FD, and the CI level.
        n_audio_examples: outputs per condition saved as wav (with their prompts) and logged to MLflow.
    """

    name: str = "eval"
    catalogue: str | None = None
    record_in_catalogue: bool = True
    rhythm: AudioSetConfig | None = None
    timbre: AudioSetConfig | None = None
    reference: AudioSetConfig | None = None
    max_pairs: int = 0
    pair_seed: int = 0
    seeds: tuple[int, ...] = (0,)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    max_duration_s: float = 6.0
    timbre_s: float = 2.0
    filter_inputs: bool = False
    loudness_db: float = -20.0
    onset: OnsetConfig = field(default_factory=OnsetConfig)
    onset_window_s: float = 0.05
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    n_bootstrap: int = 1000
    fd_bootstrap: int = 200
    ci_level: float = 0.95
    n_audio_examples: int = 3

    def __post_init__(self) -> None:
        if self.rhythm is None or self.timbre is None:
            raise ValueError("an evaluation set needs `rhythm` and `timbre` prompt sets")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if not 0 < self.timbre_s < self.max_duration_s:
            raise ValueError(f"need 0 < timbre_s < max_duration_s, got {self.timbre_s}/{self.max_duration_s}")
        if not 0 < self.ci_level < 1 or self.max_pairs < 0:
            raise ValueError("need 0 < ci_level < 1 and max_pairs >= 0")


def load_eval_set(path: str | Path | None, overrides: Sequence[str] = ()) -> EvalSetConfig:
    """Read an evaluation set YAML (``include:`` allowed) and apply ``key=value`` overrides."""
    data = load_yaml(path) if path else {}
    return from_dict(EvalSetConfig, apply_overrides(data, overrides))


# ----------------------------------------------------------------------------------------------
# Sweeps


def _split_values(text: str) -> list[str]:
    """Split "0,1,[2, 3]" on commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def parse_sweep(items: Sequence[str]) -> list[dict[str, Any]]:
    """``["guidance_scale=0,2", "iterations=4,8"]`` -> the cross product as a list of {key: value}.

    Values are YAML (``top_p=0.85,null``); bare sampler field names get the ``sampler.`` prefix.
    No items gives one empty condition.

    Raises:
        ValueError: malformed item, repeated key, or a key that cannot be swept (prompt sets etc.).
    """
    keys, values = [], []
    sampler_fields = {f.name for f in dataclasses.fields(SamplerConfig)}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or raw == "":
            raise ValueError(f"--sweep takes key=v1,v2,..., got {item!r}")
        key = f"sampler.{key}" if key in sampler_fields else key
        if not key.startswith(SWEEPABLE):
            raise ValueError(f"cannot sweep {key!r}: sweeps cover {', '.join(SWEEPABLE)}; "
                             "run one command per set")
        if key in keys:
            raise ValueError(f"--sweep names {key!r} twice")
        keys.append(key)
        values.append([yaml.safe_load(v.strip()) for v in _split_values(raw)])
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _column(key: str) -> str:
    return key.removeprefix("sampler.")


def apply_condition(cfg: EvalSetConfig, condition: Mapping[str, Any]) -> EvalSetConfig:
    """The set with a sweep condition applied (same validation as a YAML override)."""
    if not condition:
        return cfg
    overrides = [f"{k}={json.dumps(v)}" for k, v in condition.items()]
    return from_dict(EvalSetConfig, apply_overrides(to_dict(cfg), overrides))


def condition_slug(condition: Mapping[str, Any]) -> str:
    """A folder-safe name: "guidance_scale=2,iterations=8" -> "guidance_scale-2_iterations-8"."""
    if not condition:
        return "default"
    text = "_".join(f"{_column(k)}-{json.dumps(v)}" for k, v in condition.items())
    return re.sub(r"[^\w.\-]+", "", text.replace(" ", ""))


# ----------------------------------------------------------------------------------------------
# Clips


@dataclass
class Clip:
    """One prompt or reference clip: mono float32 at 44.1 kHz."""

    name: str
    audio: np.ndarray  # (N,)
    split: str = "folder"
    onsets: np.ndarray | None = None  # annotated onsets (s), if any


def load_clips(spec: AudioSetConfig, default_catalogue: str | None, what: str) -> list[Clip]:
    """Read an audio set (see :class:`AudioSetConfig`)."""
    if spec.folder is not None:
        clips = _folder_clips(spec, what)
    else:
        clips = _catalogue_clips(spec, default_catalogue, what)
    if not clips:
        raise ValueError(f"the {what} set is empty: {spec}")
    return clips


def _folder_clips(spec: AudioSetConfig, what: str) -> list[Clip]:
    root = Path(spec.folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"{what} folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if spec.max_items:
        files = files[: spec.max_items]
    clips = []
    for path in files:
        audio, _ = load_audio(path, SR, mono=True, duration_s=spec.max_seconds or None)
        onsets = _read_annotations(path.with_suffix(spec.annotations)) if spec.annotations else None
        clips.append(Clip(path.relative_to(root).as_posix(), audio[0], "folder", onsets))
    return clips


def _read_annotations(path: Path) -> np.ndarray:
    """Onset times (s) from the first column of a text/CSV file; non-numeric lines (headers) are skipped."""
    if not path.is_file():
        raise ValueError(f"onset annotation file not found: {path}")
    times = []
    for line in path.read_text().splitlines():
        first = re.split(r"[,;\t ]+", line.strip())[0] if line.strip() else ""
        try:
            times.append(float(first))
        except ValueError:
            continue
    return np.sort(np.asarray(times, dtype=np.float64))


def _catalogue_clips(spec: AudioSetConfig, default_catalogue: str | None, what: str) -> list[Clip]:
    from tria.catalog import Catalogue  # imported lazily: no DuckDB import for folder-only sets

    path = spec.catalogue or default_catalogue
    if not path:
        raise ValueError(f"the {what} set reads split {spec.split!r} from a catalogue, but none is named")
    if not Path(path).is_file():
        raise ValueError(f"catalogue not found: {path}")
    sql = """
        SELECT * FROM (
            SELECT e.excerpt_id, e.offset_s, e.duration_s, s.path, s.split,
                   row_number() OVER (PARTITION BY s.source, s.track ORDER BY e.excerpt_id) AS nth
            FROM excerpts e JOIN stems s ON s.stem_id = e.stem_id
            WHERE s.split = ? AND s.role = 'drums' AND (len(?) = 0 OR list_contains(?, s.source)))
        WHERE ? = 0 OR nth <= ? ORDER BY excerpt_id"""
    sources = list(spec.sources)
    with Catalogue(path, read_only=True) as cat:
        rows = cat.execute(sql, [spec.split, sources, sources, spec.per_track, spec.per_track]).dicts()
    if spec.max_items:
        rows = rows[: spec.max_items]
    base = Path(path).resolve().parent
    clips = []
    for r in rows:
        seconds = min(r["duration_s"], spec.max_seconds) if spec.max_seconds else r["duration_s"]
        audio = _read_excerpt(str(r["path"]), base, float(r["offset_s"]), float(seconds))
        clips.append(Clip(r["excerpt_id"], audio, r["split"]))
    return clips


def _read_excerpt(path: str, base: Path, offset_s: float, duration_s: float) -> np.ndarray:
    """(N,) float32 at 44.1 kHz of a stem window; local paths, paths relative to the catalogue, or URIs."""
    from tria import fs

    if fs.is_uri(path):
        import soundfile as sf

        with fs.open_read(path) as f:
            data = io.BytesIO(f.read())
        with sf.SoundFile(data) as snd:
            sr = snd.samplerate
            snd.seek(min(int(round(offset_s * sr)), snd.frames))
            x = snd.read(int(duration_s * sr), dtype="float32", always_2d=True).mean(axis=1)
        if x.size == 0:
            raise AudioError("empty", f"{path} at {offset_s} s has no samples")
        return resample(torch.from_numpy(x), sr, SR).numpy() if sr != SR else x
    local = Path(path)
    if not local.is_absolute() and not local.exists() and (base / local).exists():
        local = base / local
    audio, _ = load_audio(local, SR, mono=True, offset_s=offset_s, duration_s=duration_s)
    return audio[0]


def make_pairs(n_rhythm: int, n_timbre: int, max_pairs: int = 0, seed: int = 0) -> list[tuple[int, int]]:
    """(rhythm index, timbre index) pairs: all of them, or ``max_pairs`` drawn without replacement."""
    pairs = [(r, t) for r in range(n_rhythm) for t in range(n_timbre)]
    if max_pairs and max_pairs < len(pairs):
        keep = np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False)
        pairs = [pairs[i] for i in sorted(keep)]
    return pairs


# ----------------------------------------------------------------------------------------------
# Checkpoints and generation


@dataclass(frozen=True)
class CheckpointInfo:
    """What the tables, MLflow and the catalogue record about an evaluated checkpoint."""

    path: Path
    label: str  # names the checkpoint in tables, folders and MLflow runs
    codec_id: str
    features: RhythmFeatureConfig
    training_run_id: str


def checkpoint_labels(paths: Sequence[str | Path]) -> list[str]:
    """Short distinct names: the file stems, else ``run/stem`` (for runs/train/<run>/checkpoints/best.pt)."""
    paths = [Path(p) for p in paths]

    def run_and_stem(p: Path) -> str:
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return f"{run.name}/{p.stem}"

    for make in (lambda p: p.stem, run_and_stem):
        labels = [make(p) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _safe(label: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", label)


def training_run_id(path: str | Path) -> str:
    """The training run a checkpoint came from: its MLflow run id, else "local-<name>", else "unknown"."""
    ts = load_checkpoint(path, map_location="cpu").get("train_state") or {}
    run_id = str(ts.get("mlflow_run_id") or "")
    if not run_id and ts.get("config"):
        run_id = "local-" + str(json.loads(ts["config"]).get("name", ""))
    return run_id if run_id not in ("", "local-") else "unknown"


def timbre_prompt(audio: np.ndarray, cfg: EvalSetConfig) -> np.ndarray:
    """The first ``timbre_s`` seconds of a timbre clip: what generation uses as the prefix (SPEC 6.1)."""
    return audio[: int(cfg.timbre_s * SR)]


def seed_runs(seeds: Sequence[int]) -> list[tuple[int, int]]:
    """Runs of consecutive seeds as (first, count): ``generate_drums`` gives output i the seed first + i."""
    runs: list[tuple[int, int]] = []
    for s in seeds:
        if runs and runs[-1][0] + runs[-1][1] == s:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((int(s), 1))
    return runs


class _PromptScores:
    """Reference onsets and rhythm features of each rhythm-prompt span, computed once per checkpoint."""

    def __init__(self, features: RhythmFeatureConfig):
        self.features = features
        self._feats: dict[tuple[int, int], torch.Tensor] = {}
        self._onsets: dict[tuple[int, int, OnsetConfig], np.ndarray] = {}

    def features_of(self, r: int, prompt: np.ndarray) -> torch.Tensor:
        """(F, T') rhythm features of the prompt span, with the checkpoint's feature config."""
        key = (r, len(prompt))
        if key not in self._feats:
            self._feats[key] = rhythm_features(torch.from_numpy(prompt)[None, None], SR, self.features)[0]
        return self._feats[key]

    def onsets_of(self, r: int, clip: Clip, prompt: np.ndarray, onset: OnsetConfig) -> np.ndarray:
        """Reference onsets: annotated ones inside the prompt span, else those detected in it."""
        key = (r, len(prompt), onset)  # the detector settings may be swept
        if key not in self._onsets:
            if clip.onsets is not None:
                self._onsets[key] = clip.onsets[clip.onsets < len(prompt) / SR]
            else:
                self._onsets[key] = detect_onsets(prompt, SR, onset)
        return self._onsets[key]


# ----------------------------------------------------------------------------------------------
# Scoring


@dataclass
class _Embeddings:
    """Embeds clips with the set's embedder, standardised with the reference statistics when asked."""

    embedder: Any
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def fit(cls, cfg: EmbeddingConfig, reference: list[np.ndarray]) -> tuple["_Embeddings", list[np.ndarray]]:
        embedder = get_embedder(cfg.name, **cfg.options)
        raw = embed_clips(embedder, reference, SR)
        standardize = embedder.standardize if cfg.standardize is None else cfg.standardize
        self = cls(embedder)
        if standardize:
            stacked = np.concatenate(raw)
            self.mean = stacked.mean(axis=0)
            std = stacked.std(axis=0)
            self.std = np.where(std > 1e-8, std, 1.0)  # constant dims stay unscaled instead of exploding
        return self, [self._norm(e) for e in raw]

    def _norm(self, e: np.ndarray) -> np.ndarray:
        return e if self.mean is None else (e - self.mean) / self.std

    def __call__(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        return [self._norm(e) for e in embed_clips(self.embedder, clips, SR)]


def score_output(prompt_onsets: np.ndarray, prompt_feats: torch.Tensor, output: np.ndarray,
                 output_emb: np.ndarray, timbre_emb: np.ndarray, features: RhythmFeatureConfig,
                 cfg: EvalSetConfig) -> dict[str, Any]:
    """Per-output metrics: onset P/R/F1, rhythm-feature correlation per band, timbre cosine.

    Args:
        prompt_onsets: reference onset times (s) of the rhythm prompt.
        prompt_feats: (F, T') rhythm features of the prompt, with the model's ``features`` config.
        output: (N,) generated audio at 44.1 kHz.
        output_emb, timbre_emb: (n, D) embeddings of the output and of the timbre prompt.
    """
    s = onset_f1(prompt_onsets, detect_onsets(output, SR, cfg.onset), cfg.onset_window_s)
    out_feats = rhythm_features(torch.from_numpy(np.ascontiguousarray(output))[None, None], SR, features)[0]
    corr = feature_correlation(prompt_feats, out_feats)  # (F,)
    row: dict[str, Any] = {
        "onset_f1": s.f1, "onset_precision": s.precision, "onset_recall": s.recall,
        "n_onsets_prompt": s.n_reference, "n_onsets_output": s.n_estimated, "n_onsets_matched": s.n_matched,
        "rhythm_corr": float(np.nanmean(corr)) if np.isfinite(corr).any() else float("nan"),
    }
    row.update({f"rhythm_corr_b{k}": float(c) for k, c in enumerate(corr)})
    row["timbre_cosine"] = cosine_similarity(timbre_emb, output_emb)
    return row


def summarize(rows: list[dict[str, Any]], output_embs: list[np.ndarray], reference: np.ndarray,
              cfg: EvalSetConfig) -> dict[str, Any]:
    """Means with bootstrap CIs (pairs resampled as clusters) and the Frechet distance with its CI."""
    clusters = [r["pair"] for r in rows]
    out: dict[str, Any] = {"n_outputs": len(rows), "n_pairs": len(set(clusters)),
                           "n_reference_windows": len(reference)}
    names = list(PER_OUTPUT_METRICS) + sorted({k for r in rows for k in r if k.startswith("rhythm_corr_b")})
    for name in names:
        values = [r.get(name, float("nan")) for r in rows]
        mean, low, high, _ = bootstrap_ci(values, clusters, cfg.n_bootstrap, cfg.ci_level, seed=0)
        out.update({name: mean, f"{name}_ci_low": low, f"{name}_ci_high": high})
    out.update(_fd_with_ci(output_embs, clusters, reference, cfg))
    return out


def _fd_with_ci(embs: list[np.ndarray], clusters: list[int], reference: np.ndarray,
                cfg: EvalSetConfig) -> dict[str, float]:
    nan = float("nan")
    outputs = np.concatenate(embs)
    if len(outputs) < 2 or len(reference) < 2:
        return {"fd": nan, "fd_ci_low": nan, "fd_ci_high": nan}
    fd = frechet_distance(outputs, reference)
    groups: dict[int, list[np.ndarray]] = {}
    for c, e in zip(clusters, embs):
        groups.setdefault(c, []).append(e)
    keys = sorted(groups)
    stats = []
    rng = np.random.default_rng(0)
    for _ in range(cfg.fd_bootstrap if len(keys) > 1 else 0):
        drawn = np.concatenate([e for k in rng.choice(keys, len(keys)) for e in groups[k]])
        if len(drawn) >= 2:
            stats.append(frechet_distance(drawn, reference))
    alpha = (1 - cfg.ci_level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha]) if stats else (fd, fd)
    return {"fd": fd, "fd_ci_low": float(low), "fd_ci_high": float(high)}


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class EvalResult:
    """What an evaluation produced."""

    pairs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    out_dir: Path
    files: dict[str, Path]
    mlflow_run_ids: list[str] = field(default_factory=list)
    eval_ids: list[str] = field(default_factory=list)


@dataclass
class _Prepared:
    """Everything that does not depend on the checkpoint or the condition."""

    rhythm: list[Clip]
    timbre: list[Clip]
    pairs: list[tuple[int, int]]
    embeddings: _Embeddings
    reference: np.ndarray  # (n_windows, D) standardised reference embeddings
    timbre_embs: list[np.ndarray]


def _prepare(cfg: EvalSetConfig) -> _Prepared:
    t0 = time.perf_counter()
    rhythm = _long_enough(load_clips(cfg.rhythm, cfg.catalogue, "rhythm"), MIN_RHYTHM_S, "rhythm")
    timbre = _long_enough(load_clips(cfg.timbre, cfg.catalogue, "timbre"), MIN_TIMBRE_S, "timbre")
    reference = load_clips(cfg.reference, cfg.catalogue, "reference") if cfg.reference else timbre
    embeddings, ref_embs = _Embeddings.fit(cfg.embedding, [c.audio for c in reference])
    timbre_embs = embeddings([timbre_prompt(c.audio, cfg) for c in timbre])
    pairs = make_pairs(len(rhythm), len(timbre), cfg.max_pairs, cfg.pair_seed)
    n_ref, dim = sum(len(e) for e in ref_embs), ref_embs[0].shape[1]
    if n_ref <= dim:
        print(f"[eval] warning: the reference set has {n_ref} embedding windows for {dim} dimensions: "
              "its covariance is singular, so FD (and standardisation) are unreliable; use a larger "
              "reference set", flush=True)
    print(f"[eval] {cfg.name}: {len(rhythm)} rhythm x {len(timbre)} timbre prompts -> {len(pairs)} pairs, "
          f"{len(cfg.seeds)} seed(s); reference {len(reference)} clips; embedder {embeddings.embedder.name} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return _Prepared(rhythm, timbre, pairs, embeddings, np.concatenate(ref_embs), timbre_embs)


def _long_enough(clips: list[Clip], seconds: float, what: str) -> list[Clip]:
    """Drop prompts too short to generate from (tria.generate's minimums), saying which."""
    keep = [c for c in clips if len(c.audio) >= seconds * SR]
    if len(keep) < len(clips):
        short = [c.name for c in clips if len(c.audio) < seconds * SR]
        names = ", ".join(short[:5]) + (" ..." if len(short) > 5 else "")
        print(f"[eval] skipping {len(short)} {what} prompt(s) shorter than {seconds} s: {names}", flush=True)
    if not keep:
        raise ValueError(f"every {what} prompt is shorter than {seconds} s")
    return keep


def _run_condition(prep: _Prepared, ckpt: LoadedCheckpoint, scores: _PromptScores, cfg: EvalSetConfig,
                   ) -> tuple[list[dict[str, Any]], list[np.ndarray], list[np.ndarray]]:
    """Generate and score every (pair, seed) of one condition -> rows, output audio, output embeddings."""
    meta, outputs = [], []
    for p, (r, t) in enumerate(prep.pairs):
        rc, tc = prep.rhythm[r], prep.timbre[t]
        for first, n in seed_runs(cfg.seeds):  # consecutive seeds share one batch
            audio, info = generate_drums(rc.audio, SR, tc.audio, SR, ckpt.model, ckpt.codec, ckpt.features,
                                         cfg.sampler, seed=first, n_outputs=n, duration_s=cfg.max_duration_s,
                                         prefix_s=cfg.timbre_s, filter_inputs=cfg.filter_inputs,
                                         loudness_db=cfg.loudness_db)  # (n, Tr * hop)
            span = info["frames"] * ckpt.codec.hop_length  # the part of the rhythm prompt the output plays
            for seed, y in zip(info["seeds"], audio):
                meta.append((p, r, t, int(seed), span))
                outputs.append(y)
    output_embs = prep.embeddings(outputs)
    rows = []
    for (p, r, t, seed, span), y, emb in zip(meta, outputs, output_embs):
        clip = prep.rhythm[r]
        prompt = clip.audio[:span]
        row = {"pair": p, "rhythm": clip.name, "timbre": prep.timbre[t].name, "seed": seed}
        onsets, feats = scores.onsets_of(r, clip, prompt, cfg.onset), scores.features_of(r, prompt)
        row.update(score_output(onsets, feats, y, emb, prep.timbre_embs[t], ckpt.features, cfg))
        rows.append(row)
    return rows, outputs, output_embs


def run_evaluation(cfg: EvalSetConfig, checkpoints: Sequence[str | Path], out_dir: str | Path,
                   sweep: Sequence[str] = (), codec_weights: str | None = None, device: str = "auto",
                   mlflow_uri: str | None = None, mlflow_experiment: str = "tria-eval") -> EvalResult:
    """Evaluate checkpoints on a set, for every sweep condition; write tables, log, record.

    Args:
        cfg: the evaluation set.
        checkpoints: one or more checkpoint files (a ``checkpoint`` column appears for several).
        out_dir: where tables and audio examples go.
        sweep: ``["guidance_scale=0,2", ...]`` (see :func:`parse_sweep`).
        codec_weights: the codec weights file (for "dac-file-*" codec ids; for the official codec a
            local copy, or None / "official" for DAC's download cache); random-init codecs are rebuilt
            from the checkpoint's codec id.
        device: "auto", "cpu" or "cuda[:i]".
        mlflow_uri: log one MLflow run per checkpoint and condition there.
        mlflow_experiment: the MLflow experiment name.
    """
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    device = resolve_device(device)
    weights = None if codec_weights in (None, "official") else codec_weights  # "official": DAC's own cache
    conditions = parse_sweep(sweep)
    sets = [apply_condition(cfg, c) for c in conditions]  # validates every condition before any work
    prep = _prepare(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    multi = len(checkpoints) > 1
    pair_rows, summary_rows, runs = [], [], []
    for path, label in zip(checkpoints, checkpoint_labels(checkpoints)):
        ckpt = load_for_generation(path, weights, device)  # checks features and codec ids
        info = CheckpointInfo(Path(path), label, ckpt.codec_id, ckpt.features, training_run_id(path))
        scores = _PromptScores(ckpt.features)
        for condition, cond_cfg in zip(conditions, sets):
            t0 = time.perf_counter()
            rows, outputs, embs = _run_condition(prep, ckpt, scores, cond_cfg)
            cols = {"checkpoint": label} if multi else {}
            cols |= {_column(k): v for k, v in condition.items()}
            prefix = _safe(label) + "_" if multi else ""
            folder = out_dir / "examples" / (prefix + condition_slug(condition))
            _save_examples(folder, prep, rows, outputs, cond_cfg)
            summary = cols | summarize(rows, embs, prep.reference, cond_cfg)
            pair_rows += [cols | r for r in rows]
            summary_rows.append(summary)
            runs.append((info, condition, cond_cfg, summary, folder))
            print(f"[eval] {label} {condition_slug(condition)}: onset F1 {summary['onset_f1']:.3f}, "
                  f"rhythm corr {summary['rhythm_corr']:.3f}, timbre cos {summary['timbre_cosine']:.3f}, "
                  f"FD {summary['fd']:.2f} ({len(rows)} outputs, {time.perf_counter() - t0:.1f} s)",
                  flush=True)
        del ckpt  # one model in memory at a time
    files = write_tables(out_dir, pair_rows, summary_rows, cfg, [str(c) for c in checkpoints], sweep)
    result = EvalResult(pair_rows, summary_rows, out_dir, files)
    if mlflow_uri:
        result.mlflow_run_ids = _log_mlflow(mlflow_uri, mlflow_experiment, cfg, runs, files, out_dir)
    if cfg.catalogue and cfg.record_in_catalogue:
        result.eval_ids = _record(cfg, runs)
    return result


def _save_examples(folder: Path, prep: _Prepared, rows: list[dict[str, Any]], outputs: list[np.ndarray],
                   cfg: EvalSetConfig) -> None:
    for row, y in list(zip(rows, outputs))[: cfg.n_audio_examples]:
        stem = f"pair{row['pair']:03d}_seed{row['seed']}"
        ri, ti = prep.pairs[row["pair"]]
        r, t = prep.rhythm[ri], prep.timbre[ti]
        save_audio(folder / f"{stem}_output.wav", np.clip(y, -1, 1), SR)
        save_audio(folder / f"{stem}_rhythm.wav", np.clip(r.audio[: len(y)], -1, 1), SR)
        save_audio(folder / f"{stem}_timbre.wav", np.clip(timbre_prompt(t.audio, cfg), -1, 1), SR)


# ----------------------------------------------------------------------------------------------
# Tables, MLflow, catalogue


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _csv_cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else format(v, ".10g")  # 1.5 stays "1.5"; metrics keep 10 digits
    return _fmt(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows as a GitHub markdown table (floats with 4 decimals, NaN blank)."""
    cols = columns or _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _summary_view(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Summary rows with "mean [low, high]" cells, for people."""
    view = []
    for r in rows:
        v = {k: val for k, val in r.items() if not k.endswith(("_ci_low", "_ci_high"))}
        for k in list(v):
            if f"{k}_ci_low" in r and isinstance(v[k], float) and not math.isnan(v[k]):
                v[k] = f"{v[k]:.3f} [{r[f'{k}_ci_low']:.3f}, {r[f'{k}_ci_high']:.3f}]"
        view.append(v)
    return view


def write_tables(out_dir: Path, pairs: list[dict[str, Any]], summary: list[dict[str, Any]],
                 cfg: EvalSetConfig, checkpoints: list[str], sweep: Sequence[str]) -> dict[str, Path]:
    """pairs.csv, summary.csv, results.md, results.json and eval_set.yaml in ``out_dir``."""
    files = {"pairs_csv": out_dir / "pairs.csv", "summary_csv": out_dir / "summary.csv",
             "markdown": out_dir / "results.md", "json": out_dir / "results.json",
             "set": out_dir / "eval_set.yaml"}
    for key, rows in (("pairs_csv", pairs), ("summary_csv", summary)):
        with open(files[key], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_columns(rows))
            writer.writeheader()
            writer.writerows([{k: _csv_cell(v) for k, v in r.items()} for r in rows])
    level = int(round(cfg.ci_level * 100))
    md = [f"# Evaluation: {cfg.name}", "", f"Checkpoints: {', '.join(checkpoints)}",
          f"Sweep: {' '.join(sweep) or 'none'}", "",
          f"## Summary (mean [{level}% bootstrap CI over pairs]; fd: Frechet distance to the reference)",
          "",
          markdown_table(_summary_view(summary)), "", "## Per output", "", markdown_table(pairs), ""]
    files["markdown"].write_text("\n".join(md))
    resolved = to_dict(cfg)
    everything = {"set": resolved, "checkpoints": checkpoints, "sweep": list(sweep), "summary": summary,
                  "pairs": pairs}
    files["json"].write_text(json.dumps(everything, indent=1, default=_json_default))
    files["set"].write_text(yaml.safe_dump(json.loads(json.dumps(resolved, default=str)), sort_keys=False))
    return files


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def _finite(summary: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _log_mlflow(uri: str, experiment: str, cfg: EvalSetConfig, runs: list, files: dict[str, Path],
                out_dir: Path) -> list[str]:
    """One MLflow run per checkpoint and condition: params, ``eval/*`` metrics, tables, audio examples."""
    from tria.tracking import MLflowLogger

    ids = []
    for ck, condition, cond_cfg, summary, folder in runs:
        name = f"{cfg.name}/{ck.label}/{condition_slug(condition)}"
        run_dir = out_dir / "mlflow" / f"{_safe(ck.label)}_{condition_slug(condition)}"
        logger = MLflowLogger(uri, experiment, run_name=name, run_dir=run_dir,
                              tags={"tria.eval_set": cfg.name, "tria.checkpoint": str(ck.path.resolve())})
        logger.log_config({"set": to_dict(cond_cfg), "checkpoint": str(ck.path), "condition": dict(condition),
                           "codec_id": ck.codec_id, "features_id": ck.features.config_id,
                           "training_run_id": ck.training_run_id})
        logger.log_dict({f"eval/{k}": v for k, v in _finite(summary).items()}, step=0)
        for key in ("summary_csv", "pairs_csv", "markdown"):
            logger.log_artifact(files[key])
        if folder.is_dir():
            logger.log_artifact(folder)
        logger.close()
        ids.append(logger.run_id)
    return ids


def _record(cfg: EvalSetConfig, runs: list) -> list[str]:
    """One ``eval_runs`` row per checkpoint and condition (a locked catalogue only warns)."""
    from tria.catalog import Catalogue, EvalRunRow, to_json

    split = cfg.timbre.split or "folder"
    rows = [EvalRunRow(training_run_id=ck.training_run_id, checkpoint=str(ck.path.resolve()), split=split,
                       metrics_json=to_json(_finite(summary)),
                       config_json=to_json({"set": to_dict(cond_cfg), "condition": dict(condition),
                                            "codec_id": ck.codec_id, "features_id": ck.features.config_id}))
            for ck, condition, cond_cfg, summary, _ in runs]
    try:
        with Catalogue(cfg.catalogue) as cat, cat.transaction():
            return [cat.add_eval_run(row) for row in rows]
    except Exception as e:  # e.g. the pipeline holds the write lock: the tables on disk still have it all
        print(f"[eval] warning: could not record the evaluation in {cfg.catalogue}: {e}", flush=True)
        return []


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tria.evaluate --checkpoint CKPT --set SET.yaml [options] [key=value ...] [--sweep ..]``."""
    ap = argparse.ArgumentParser(prog="python -m tria.evaluate", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", nargs="+", required=True, help="checkpoint file(s)")
    ap.add_argument("--set", required=True, dest="set_path", help="evaluation set YAML (conf/eval/*.yaml)")
    ap.add_argument("--out", help="output folder (default runs/eval/<set name>)")
    ap.add_argument("--codec-weights",
                    help="codec weights file (default: rebuilt from the checkpoint's codec id; the official "
                         "codec through DAC's cache)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    ap.add_argument("--mlflow-uri", help="MLflow tracking URI (http://host:port, sqlite:///..., file:...)")
    ap.add_argument("--mlflow-experiment", default="tria-eval")
    ap.add_argument("--sweep", nargs="+", default=[], metavar="KEY=V1,V2", help="cross product of conditions")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="changes to the set (before --sweep)")
    args = ap.parse_args(argv)
    # `--checkpoint a.pt max_pairs=4` would hand the override to --checkpoint (nargs="+"): move it back
    moved = [c for c in args.checkpoint if "=" in c and not Path(c).exists()]
    args.checkpoint = [c for c in args.checkpoint if c not in moved]
    args.overrides = moved + args.overrides
    try:
        cfg = load_eval_set(args.set_path, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / "eval" / cfg.name
        result = run_evaluation(cfg, args.checkpoint, out, args.sweep, args.codec_weights, args.device,
                                args.mlflow_uri, args.mlflow_experiment)
    except (ValueError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown_table(_summary_view(result.summary)))
    files = result.files
    print(f"[eval] tables: {files['summary_csv']}, {files['pairs_csv']}, {files['markdown']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
