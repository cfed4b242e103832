"""Train a DAC-architecture codec on drum stems from the catalogue (the demo codec's recipe).

    python -m tria.codec_train conf/codec/demo_drums.yaml [key=value ...] [--resume]

The model is the ``dac`` package's ``DAC`` class with the project's token layout (9 codebooks x
1024 codes, hop 512, 44.1 kHz; only the widths are configurable). Losses are the ``dac`` package's
own ``MultiScaleSTFTLoss`` and ``L1Loss`` plus the quantiser's commitment and codebook losses; an
optional multi-scale mel term (:func:`tria.metrics.mel_distance`'s definition, in torch) stands in
for DAC's ``MelSpectrogramLoss``, which needs librosa. No discriminator: DAC's GAN loss is left
out (not tried here: its discriminators add their own passes to every step, and on 2 CPU cores the
reconstruction losses alone reached the demo codec's targets).

Data: the stems of one split (and tiers, sources) that the catalogue lists, read once into memory
(mono 44.1 kHz float32: about 635 MB per hour). A stem that cannot be used is skipped with a
reason (``missing``, ``unreadable``, ``empty``, ``non_finite``, ``too_short``, ``silent``), listed
in ``<run>/rejects.jsonl`` and in MLflow; the run fails only when no stem is left. Every step draws
its crops from ``default_rng([seed, step])``, and each crop is normalised to -16 dBFS RMS exactly as
:class:`tria.codec.Codec` normalises what it encodes, so a resumed run sees the same batches.

Every ``eval_every`` steps (and at step 0, i.e. the random init) the codec encodes and decodes the
first ``eval_seconds`` of the ``val_split`` stems through :class:`tria.codec.Codec` (the pipeline's
own code path) and logs ``eval/onset_f1`` (x vs decode(encode(x)), :mod:`tria.metrics`) and
``eval/mel_distance`` (both at -16 dBFS RMS). Checkpoints (model, optimiser, step, RNG, MLflow run)
go to ``<out_dir>/<name>/checkpoints/latest.pt``; the weights in DAC's file layout, loadable with
``codec.weights=PATH``, to ``<out_dir>/<name>/codec.pth``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import tria  # noqa: F401  (torchaudio placeholder before dac is imported)
from tria.audio import AudioError, load_audio
from tria.codec import (CODEBOOK_SIZE, HOP_LENGTH, N_CODEBOOKS, SAMPLE_RATE, TARGET_RMS_DB, Codec, _build_dac,
                        _load_dac_file, normalize_rms, resolve_device)
from tria.config import ConfigError, apply_overrides, from_dict, load_yaml, resolve_path, to_dict
from tria.features import rms_db
from tria.metrics import MEL_BANDS, MEL_WINDOWS, detect_onsets, mel_distance, onset_f1
from tria.train import MlflowConfig, _Fanout, _progress
from tria.tracking import JsonlLogger, MLflowLogger, StdoutLogger

FORMAT = "tria-codec-train-v1"
CONSOLE_METRICS = ("train/loss", "train/stft", "train/l1", "eval/onset_f1", "eval/mel_distance")


@dataclass(frozen=True)
class ArchConfig:
    """Widths of the DAC model; the token layout (rates, codebooks) is fixed by the project."""

    encoder_dim: int = 16
    decoder_dim: int = 128
    latent_dim: int | None = None  # None: encoder_dim * 16, as DAC
    codebook_dim: int = 8

    def dac_kwargs(self) -> dict[str, Any]:
        if min(self.encoder_dim, self.decoder_dim, self.codebook_dim) < 1:
            raise ConfigError(f"arch widths must be positive, got {self}")
        if self.decoder_dim % 16:
            raise ConfigError(f"arch.decoder_dim must divide by 16 (4 upsampling blocks halve it), got {self.decoder_dim}")
        return dict(encoder_dim=self.encoder_dim, encoder_rates=[2, 4, 8, 8], latent_dim=self.latent_dim,
                    decoder_dim=self.decoder_dim, decoder_rates=[8, 8, 4, 2], n_codebooks=N_CODEBOOKS,
                    codebook_size=CODEBOOK_SIZE, codebook_dim=self.codebook_dim, quantizer_dropout=0.0,
                    sample_rate=SAMPLE_RATE)


@dataclass(frozen=True)
class CodecDataConfig:
    catalogue: str = "data/demo/catalogue.duckdb"
    train_split: str = "train"
    val_split: str = "val"
    tiers: tuple[str, ...] = ("isolated", "separated", "synthetic")
    sources: tuple[str, ...] = ()  # () = every source
    role: str = "drums"
    crop_frames: int = 43  # codec frames per training crop (43 x 512 samples = 0.5 s)
    batch_size: int = 4
    min_rms_db: float = -60.0  # quieter crops are redrawn; quieter stems are rejected ("silent")
    eval_items: int = 8  # val stems scored by eval
    eval_seconds: float = 6.0


@dataclass(frozen=True)
class LossConfig:
    stft: float = 1.0  # dac.nn.loss.MultiScaleSTFTLoss (log + linear magnitude, windows 2048 and 512)
    l1: float = 1.0  # dac.nn.loss.L1Loss on the waveform
    mel: float = 0.0  # multi-scale log-mel L1 (tria.metrics.mel_distance's definition)
    commitment: float = 0.25
    codebook: float = 1.0


@dataclass(frozen=True)
class CodecOptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    grad_clip: float = 1e3


@dataclass(frozen=True)
class CodecTrainConfig:
    name: str = "codec"
    root: str = ""
    out_dir: str = "runs/codec"
    seed: int = 0
    num_iters: int = 1000
    log_every: int = 10
    eval_every: int = 200  # 0 = never (step 0 and the last step are always scored when > 0)
    ckpt_every: int = 50
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 = torch's default. 1 is much faster on a busy shared CPU
    init_from: str = ""  # a DAC weights file to start from (same arch), e.g. to continue a finished run
    arch: ArchConfig = field(default_factory=ArchConfig)
    data: CodecDataConfig = field(default_factory=CodecDataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: CodecOptimConfig = field(default_factory=CodecOptimConfig)
    mlflow: MlflowConfig = field(default_factory=lambda: MlflowConfig(experiment="codec"))

    def path(self, p: str) -> Path:
        return resolve_path(self.root, p)

    @property
    def run_dir(self) -> Path:
        return self.path(self.out_dir) / self.name


def load_codec_train_config(path: str | None, overrides: list[str]) -> CodecTrainConfig:
    cfg = from_dict(CodecTrainConfig, apply_overrides(load_yaml(path) if path else {}, overrides))
    cfg.arch.dac_kwargs()
    if cfg.data.crop_frames < 8 or cfg.data.batch_size < 1:
        raise ConfigError(f"data.crop_frames must be >= 8 and data.batch_size >= 1, got {cfg.data}")
    return cfg


# ---------------------------------------------------------------------------------------------
# Data: stems from the catalogue, checked once, cropped per step
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reject:
    stem_id: str
    path: str
    reason: str
    detail: str


def select_stems(cfg: CodecTrainConfig, split: str) -> list[dict[str, Any]]:
    """The catalogue's stems of ``split`` with the configured role, tiers and sources (sorted by path)."""
    import duckdb

    db = cfg.path(cfg.data.catalogue)
    if not db.is_file():
        raise ValueError(f"catalogue {db} not found: run the pipeline (or `python -m pipelines.sources ingest`) first")
    sql = ("SELECT stem_id, path, source, tier, split FROM stems WHERE split = ? AND role = ? "
           "AND list_contains(?, tier)")
    params: list[Any] = [split, cfg.data.role, list(cfg.data.tiers)]
    if cfg.data.sources:
        sql += " AND list_contains(?, source)"
        params.append(list(cfg.data.sources))
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(sql + " ORDER BY path", params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()


def load_stems(rows: list[dict[str, Any]], min_samples: int, min_rms_db: float,
               base: Path | None = None) -> tuple[list[torch.Tensor], list[dict[str, Any]], list[Reject]]:
    """Read every stem (mono, 44.1 kHz); unusable ones become :class:`Reject` s with a reason."""
    kept, audio, rejects = [], [], []
    for r in rows:
        path = Path(r["path"])
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            x, _ = load_audio(path, sample_rate=SAMPLE_RATE, mono=True)
        except AudioError as e:
            rejects.append(Reject(r["stem_id"], str(path), e.reason, str(e)))
            continue
        x = torch.from_numpy(x[0])
        if x.numel() < min_samples:
            rejects.append(Reject(r["stem_id"], str(path), "too_short",
                                  f"{x.numel()} samples at 44.1 kHz, a crop needs {min_samples}"))
            continue
        level = float(rms_db(x[None, None])[0])
        if level < min_rms_db:
            rejects.append(Reject(r["stem_id"], str(path), "silent", f"RMS {level:.1f} dBFS < {min_rms_db} dBFS"))
            continue
        kept.append(r)
        audio.append(x)
    return audio, kept, rejects


def crop_batch(stems: list[torch.Tensor], step: int, seed: int, batch_size: int, crop: int,
               min_rms_db: float) -> torch.Tensor:
    """The batch of ``step``: (B, 1, crop) crops normalised to -16 dBFS RMS; a function of (seed, step).

    Stems are drawn with probability proportional to their length; a crop quieter than
    ``min_rms_db`` is redrawn (up to 64 times, then kept, so a step always has a batch).
    """
    rng = np.random.default_rng([seed, step])
    lengths = np.array([len(s) - crop + 1 for s in stems], dtype=np.float64)
    p = lengths / lengths.sum()
    out = []
    for _ in range(batch_size):
        for _attempt in range(64):
            s = stems[int(rng.choice(len(stems), p=p))]
            o = int(rng.integers(len(s) - crop + 1))
            x = s[o:o + crop]
            if float(rms_db(x[None, None])[0]) >= min_rms_db:
                break
        out.append(x)
    return normalize_rms(torch.stack(out)[:, None], TARGET_RMS_DB)


# ---------------------------------------------------------------------------------------------
# Losses and evaluation
# ---------------------------------------------------------------------------------------------

class MelLoss(torch.nn.Module):
    """Differentiable multi-scale log-mel L1: the definition of :func:`tria.metrics.mel_distance`."""

    def __init__(self, windows=MEL_WINDOWS, n_mels=MEL_BANDS, clamp_eps: float = 1e-5):
        super().__init__()
        from tria.features import mel_filterbank

        self.windows, self.clamp_eps = tuple(windows), clamp_eps
        for w, n in zip(windows, n_mels, strict=True):
            self.register_buffer(f"fb{w}", torch.from_numpy(mel_filterbank(SAMPLE_RATE, w, n)), persistent=False)
            self.register_buffer(f"win{w}", torch.hann_window(w), persistent=False)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        total = y.new_zeros(())
        for w in self.windows:
            fb, win = getattr(self, f"fb{w}"), getattr(self, f"win{w}")
            mels = [torch.log10((fb @ torch.stft(z.reshape(-1, z.shape[-1]), w, w // 4, window=win,
                                                 return_complex=True).abs()).clamp_min(self.clamp_eps))
                    for z in (y, x)]
            total = total + (mels[0] - mels[1]).abs().mean()
        return total


def evaluate_codec(codec: Codec, clips: list[np.ndarray]) -> dict[str, float]:
    """Mean onset F1 (x vs decode(encode(x))) and mean mel distance (both at -16 dBFS RMS) over ``clips``.

    ``clips`` are mono 44.1 kHz arrays. Decoding goes through :class:`Codec`, as in the pipeline.
    """
    f1s, dists = [], []
    for clip in clips:
        x = torch.as_tensor(clip, dtype=torch.float32)[None, None]
        y = codec.decode(codec.encode(x, SAMPLE_RATE))[0, 0, : x.shape[-1]]
        ref = normalize_rms(x[..., : y.shape[-1]], TARGET_RMS_DB)[0, 0].numpy()
        est = normalize_rms(y[None, None], TARGET_RMS_DB)[0, 0].numpy()
        f1s.append(onset_f1(detect_onsets(ref, SAMPLE_RATE), detect_onsets(est, SAMPLE_RATE)).f1)
        dists.append(mel_distance(ref, est, SAMPLE_RATE))
    return {"eval/onset_f1": float(np.mean(f1s)), "eval/mel_distance": float(np.mean(dists)),
            "eval/n_clips": float(len(clips))}


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------

class CodecTrainer:
    def __init__(self, cfg: CodecTrainConfig, resume: bool = False):
        from audiotools import AudioSignal
        from dac.nn.loss import L1Loss, MultiScaleSTFTLoss

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.crop = cfg.data.crop_frames * HOP_LENGTH
        self._signal = AudioSignal

        rows = select_stems(cfg, cfg.data.train_split)
        if not rows:
            raise ValueError(f"no '{cfg.data.train_split}' stems with role {cfg.data.role!r}, tiers "
                             f"{list(cfg.data.tiers)} and sources {list(cfg.data.sources) or 'any'} in "
                             f"{cfg.path(cfg.data.catalogue)}")
        self.stems, kept, self.rejects = load_stems(rows, self.crop, cfg.data.min_rms_db)
        val_rows = select_stems(cfg, cfg.data.val_split) if cfg.eval_every else []
        val_audio, val_kept, val_rejects = load_stems(val_rows[: cfg.data.eval_items], HOP_LENGTH * 8,
                                                      cfg.data.min_rms_db)
        self.rejects += val_rejects
        n_eval = int(cfg.data.eval_seconds * SAMPLE_RATE)
        self.eval_clips = [a[:n_eval].numpy() for a in val_audio]
        for r in self.rejects:
            print(f"[codec_train] rejected {r.path}: {r.reason} ({r.detail})", flush=True)
        if not self.stems:
            raise ValueError(f"all {len(rows)} '{cfg.data.train_split}' stems were rejected; reasons: "
                             f"{sorted({r.reason for r in self.rejects})}")
        self.selection = {"train": [r["path"] for r in kept], "val": [r["path"] for r in val_kept]}

        torch.manual_seed(cfg.seed)
        self.model = _build_dac(cfg.arch.dac_kwargs())
        if cfg.init_from:
            self.model.load_state_dict(_load_dac_file(cfg.path(cfg.init_from)).state_dict())
        self.model.to(self.device)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.stft_loss, self.l1_loss = MultiScaleSTFTLoss(), L1Loss()
        self.mel_loss = MelLoss().to(self.device) if cfg.loss.mel else None
        self.step, self.mlflow_run_id = 0, ""
        n_params = sum(p.numel() for p in self.model.parameters())
        print(f"[codec_train] {cfg.name}: DAC {n_params / 1e6:.2f}M parameters on {self.device} "
              f"(threads {torch.get_num_threads()}); {len(self.stems)} train stems "
              f"({sum(len(s) for s in self.stems) / SAMPLE_RATE / 60:.1f} min), {len(self.eval_clips)} eval clips, "
              f"{len(self.rejects)} rejected", flush=True)
        if resume:
            self._resume()
        self.logger = self._build_logger()

    def _build_logger(self):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        loggers = [JsonlLogger(self.run_dir / "metrics.jsonl"), StdoutLogger(keys=CONSOLE_METRICS, show_config=False)]
        m = self.cfg.mlflow
        if m.tracking_uri:
            ml = MLflowLogger(m.tracking_uri, m.experiment, run_name=m.run_name or self.cfg.name,
                              run_id=self.mlflow_run_id or None, run_dir=str(self.run_dir))
            self.mlflow_run_id = ml.run_id
            loggers.append(ml)
            print(f"[codec_train] MLflow run {ml.run_id} at {m.tracking_uri} (experiment {m.experiment})", flush=True)
        logger = _Fanout(loggers)
        resolved = to_dict(self.cfg)
        logger.log_config(resolved)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        (self.run_dir / "stems.json").write_text(json.dumps(self.selection, indent=1))
        logger.log_artifact(self.run_dir / "stems.json")
        with open(self.run_dir / "rejects.jsonl", "w") as f:
            for r in self.rejects:
                f.write(json.dumps(r.__dict__) + "\n")
        if self.rejects:
            logger.log_artifact(self.run_dir / "rejects.jsonl")
        return logger

    # -- checkpoints --------------------------------------------------------------------------

    def save(self) -> Path:
        path = self.ckpt_dir / "latest.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"format": FORMAT, "step": self.step, "model": self.model.state_dict(),
                "dac_kwargs": json.dumps(self.cfg.arch.dac_kwargs()), "optimizer": self.optimizer.state_dict(),
                "rng_torch": torch.get_rng_state(), "mlflow_run_id": self.mlflow_run_id,
                "config": json.dumps(to_dict(self.cfg))}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint whole
        return path

    def _resume(self) -> None:
        for stale in self.ckpt_dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        path = self.ckpt_dir / "latest.pt"
        if not path.exists():
            print(f"[codec_train] --resume: no checkpoint at {path}, starting from step 0", flush=True)
            return
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("format") != FORMAT:
                raise ValueError(f"format {blob.get('format')!r}, expected {FORMAT!r}")
        except Exception as e:
            raise ValueError(f"cannot resume from {path}: not a codec training checkpoint ({e})") from e
        if json.loads(blob["dac_kwargs"]) != self.cfg.arch.dac_kwargs():
            raise ValueError(f"cannot resume from {path}: it has arch {blob['dac_kwargs']}, this config "
                             f"{json.dumps(self.cfg.arch.dac_kwargs())}")
        self.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["rng_torch"])
        self.step, self.mlflow_run_id = int(blob["step"]), str(blob["mlflow_run_id"])
        print(f"[codec_train] resumed from {path} at step {self.step}", flush=True)

    def export(self, path: Path | None = None) -> Path:
        """The weights in DAC's file layout (``codec.weights=PATH`` loads them)."""
        return Codec(self.model, "training", "codec being trained").save(path or self.run_dir / "codec.pth")

    # -- steps --------------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        cfg, w = self.cfg, self.cfg.loss
        x = crop_batch(self.stems, self.step, cfg.seed, cfg.data.batch_size, self.crop, cfg.data.min_rms_db)
        x = x.to(self.device)
        self.model.train()
        out = self.model(x, SAMPLE_RATE)
        y = out["audio"][..., : x.shape[-1]]
        sx, sy = self._signal(x, SAMPLE_RATE), self._signal(y, SAMPLE_RATE)
        terms = {"stft": self.stft_loss(sy, sx) if w.stft else y.new_zeros(()),
                 "l1": self.l1_loss(sy, sx) if w.l1 else y.new_zeros(()),
                 "mel": self.mel_loss(y, x) if self.mel_loss is not None else y.new_zeros(()),
                 "commitment": out["vq/commitment_loss"], "codebook": out["vq/codebook_loss"]}
        loss = sum(getattr(w, k) * v for k, v in terms.items())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"codec loss is {float(loss)} at step {self.step}: lower optim.lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.step += 1
        return {"train/loss": loss.item(), "train/grad_norm": grad_norm.item(),
                **{f"train/{k}": v.item() for k, v in terms.items()}}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if not self.eval_clips:
            return {}
        codec = Codec(self.model, "training", "codec being trained")  # sets eval mode
        try:
            return evaluate_codec(codec, self.eval_clips)
        finally:
            self.model.train()

    def train(self) -> dict[str, float]:
        cfg = self.cfg
        if cfg.eval_every and self.step == 0:
            scores = self.evaluate()
            if scores:
                self.logger.log_dict(scores, 0)
                print(f"[codec_train] step 0 (initial weights): onset F1 {scores['eval/onset_f1']:.3f}, "
                      f"mel distance {scores['eval/mel_distance']:.3f}", flush=True)
        last: dict[str, float] = {}
        progress = _progress(True, self.step, cfg.num_iters)
        t_log = time.perf_counter()
        while self.step < cfg.num_iters:
            last = self.train_step()
            progress.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.num_iters:
                last["train/step_s"] = (time.perf_counter() - t_log) / (self.step % cfg.log_every or cfg.log_every)
                self.logger.log_dict(last, self.step)
                t_log = time.perf_counter()
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.num_iters):
                scores = self.evaluate()
                self.logger.log_dict(scores, self.step)
                last.update(scores)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.num_iters:
                self.save()
        progress.close()
        path = self.export()
        self.logger.log_artifact(path)
        return last

    def close(self) -> None:
        self.logger.close()


def evaluate_heldout(cfg: CodecTrainConfig, weights: str, split: str = "test") -> dict[str, dict[str, float]]:
    """Score ``weights`` (a DAC file of ``cfg.arch``) on every ``split`` stem of the config's selection,
    clipped to ``data.eval_seconds``, against the same architecture at random init (seed ``cfg.seed``):
    the reference the demo codec's targets are stated against."""
    rows = select_stems(cfg, split)
    audio, _, rejects = load_stems(rows, HOP_LENGTH * 8, cfg.data.min_rms_db)
    for r in rejects:
        print(f"[codec_train] rejected {r.path}: {r.reason} ({r.detail})", flush=True)
    if not audio:
        raise ValueError(f"no usable '{split}' stems in {cfg.path(cfg.data.catalogue)}")
    clips = [a[: int(cfg.data.eval_seconds * SAMPLE_RATE)].numpy() for a in audio]
    torch.manual_seed(cfg.seed)
    models = {"random init": _build_dac(cfg.arch.dac_kwargs()), "trained": _load_dac_file(cfg.path(weights))}
    out = {}
    for name, model in models.items():
        with torch.no_grad():
            scores = evaluate_codec(Codec(model, name, name), clips)
        out[name] = scores
        print(f"[codec_train] {split} ({len(clips)} clips of {cfg.data.eval_seconds:g} s), {name}: onset F1 "
              f"{scores['eval/onset_f1']:.3f}, mel distance {scores['eval/mel_distance']:.3f}", flush=True)
    ratio = out["trained"]["eval/mel_distance"] / out["random init"]["eval/mel_distance"]
    print(f"[codec_train] mel distance trained/random init = {ratio:.2f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tria.codec_train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="codec training YAML (conf/codec/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. num_iters=100 data.batch_size=8")
    ap.add_argument("--resume", action="store_true", help="continue from <out_dir>/<name>/checkpoints/latest.pt")
    ap.add_argument("--evaluate", metavar="WEIGHTS", help="train nothing: score this DAC file on held-out stems "
                    "against the same architecture at random init")
    ap.add_argument("--split", default="test", help="the split --evaluate scores (default: test)")
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = load_codec_train_config(args.config, args.overrides)
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.evaluate:
        try:
            evaluate_heldout(cfg, args.evaluate, args.split)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="stft_data changed shape")  # audiotools, harmless
        try:
            trainer = CodecTrainer(cfg, resume=args.resume)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            last = trainer.train()
        finally:
            trainer.close()
    f1, dist = last.get("eval/onset_f1", math.nan), last.get("eval/mel_distance", math.nan)
    print(f"[codec_train] done: step {trainer.step}, loss {last.get('train/loss', math.nan):.4f}, onset F1 {f1:.3f}, "
          f"mel distance {dist:.3f}; weights {trainer.run_dir / 'codec.pth'} (codec.weights=PATH)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
