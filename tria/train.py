"""Train TRIA on WebDataset shards: one process or DDP under torchrun, the same code path.

One process (CPU or one GPU)::

    python -m tria.train conf/train/paper_2b.yaml [key=value ...]

One machine, N processes (gloo on CPU, nccl on GPU)::

    torchrun --standalone --nproc_per_node N -m tria.train conf/train/paper_2b.yaml

Several machines (``orchestration/train.sh`` builds these commands; see its ``--help``)::

    torchrun --nnodes M --nproc_per_node N --rdzv_backend c10d --rdzv_id RUN \\
        --rdzv_endpoint HOST:29500 -m tria.train conf/train/paper_2b.yaml

Resume exactly where a run stopped (model, optimiser, scheduler, scaler, RNG, data position)::

    python -m tria.train conf/train/paper_2b.yaml --resume

Fine-tune from a checkpoint (ours, an authors' `model.pt`, or an authors' release by name): its
weights start the run, and its architecture and rhythm-feature config replace the config's::

    python -m tria.train conf/train/release_2b.yaml init_from=small_musdb_moises_fsl_2b

The shards come from the catalogue (split, tiers, config ids); every rank-0 side effect (MLflow,
checkpoints, samples, catalogue rows) happens in one place: ``Trainer.is_main``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel as DDP

import tria  # noqa: F401  (torchaudio placeholder)
from tria.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint
from tria.codec import CodecConfig, resolve_device
from tria.config import ConfigError, apply_overrides, from_dict, load_yaml, resolve_path, to_dict
from tria.curriculum import CurriculumConfig, allowed_codebooks, codebook_weights
from tria.catalog import Catalogue
from tria.data import ReaderConfig, ShardDataset, ShardLoader, ShardSpec
from tria.features import RhythmFeatureConfig
from tria.masking import MaskConfig, build_training_batch, masked_token_loss
from tria.model import TRIA, ModelConfig, count_parameters
from tria.sampling import SamplerConfig, generate
from tria.tracking import JsonlLogger, MLflowLogger, NullLogger, StdoutLogger

SIZES = {  # named model sizes (SPEC 3.1); `model.overrides` changes any field
    "small": dict(n_channels=512, n_layers=12, n_heads=8, p_dropout=0.2),
    "student": dict(n_channels=384, n_layers=6, n_heads=6, p_dropout=0.2),
    "tiny": dict(n_channels=64, n_layers=2, n_heads=4, p_dropout=0.0),
}


CONSOLE_METRICS = ("train/loss", "val/loss", "train/lr", "mask/rate", "data/examples_per_s", "data/wait_fraction")


@dataclass(frozen=True)
class ModelSection:
    size: str = "small"
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:  # SPEC 4.2
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-6
    eps: float = 1e-8
    gamma: float = 0.999996  # ExponentialLR per step
    grad_clip: float = 1e3  # the authors' value: effectively logging only


@dataclass(frozen=True)
class DataConfig:
    catalogue: str = "data/catalogue.duckdb"
    train_split: str = "train"
    val_split: str = "val"
    tiers: tuple[str, ...] = ("isolated", "separated", "synthetic")
    tier_weights: dict = field(default_factory=dict)  # {tier: weight}: mix tiers as weighted streams
    epoch_size: int | None = None  # samples per epoch when tiers are mixed by weight
    batch_size: int = 24  # global: divided by the world size (as the authors' Accelerator does)
    num_workers: int = 0  # DataLoader workers per rank; they persist across epochs (GPU configs: 2)
    shuffle_buffer: int = 2048
    val_batches: int = 8
    prefetch_factor: int | None = None  # batches per worker queued ahead; None: cover one shuffle window
    record_keys: bool = False  # write the keys each step trained on to <run>/keys/rank<r>.jsonl
    augment_id: str = ""  # which prompt set of the features config ("" = the only one there is)


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = ""  # "" = no MLflow (JSONL + stdout only)
    experiment: str = "tria"
    run_name: str = ""
    run_id: str = ""  # log into this existing run (a sweep's child run) instead of creating one


@dataclass(frozen=True)
class TrainConfig:
    name: str = "tria"
    root: str = ""  # base of relative paths ("" = $TRIA_ROOT or the current folder)
    out_dir: str = "runs/train"  # checkpoints, metrics.jsonl, samples go to out_dir/name
    seed: int = 0
    num_iters: int = 120_000
    log_every: int = 10
    val_every: int = 2000
    sample_every: int = 2000  # 0 = never
    n_samples: int = 4
    ckpt_every: int = 2000
    # val/*_cbK from every example on every codebook its tier allows (K more passes), not one drawn codebook
    val_every_codebook: bool = False
    amp: bool = True  # fp16 autocast + GradScaler, CUDA only (as the authors)
    device: str = "auto"
    model: ModelSection = field(default_factory=ModelSection)
    features: RhythmFeatureConfig = field(default_factory=RhythmFeatureConfig.paper)
    codec: CodecConfig = field(default_factory=CodecConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    # A checkpoint whose weights start training (fine-tuning): a file (ours or an authors' model.pt)
    # or an authors' release name. Its architecture and feature config replace `model`/`features`.
    init_from: str = ""

    def path(self, p: str) -> Path:
        return resolve_path(self.root, p)

    @property
    def run_dir(self) -> Path:
        return self.path(self.out_dir) / self.name

    def model_config(self) -> ModelConfig:
        if self.model.size not in SIZES:
            raise ConfigError(f"model.size must be one of {sorted(SIZES)}, got {self.model.size!r}")
        return ModelConfig(**{**SIZES[self.model.size], "n_feats": self.features.n_bands, **self.model.overrides})


def load_train_config(path: str | None, overrides: list[str]) -> TrainConfig:
    return from_dict(TrainConfig, apply_overrides(load_yaml(path) if path else {}, overrides))


TRAINING_ONLY_FIELDS = ("p_dropout", "p_token_dropout")  # the run's own, not the checkpoint's


def apply_init_from(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, torch.Tensor] | None]:
    """The config a fine-tuning run trains with, and the weights it starts from (None without `init_from`).

    The checkpoint's architecture replaces the model section (dropouts stay the run's: its size
    preset and overrides), and the rhythm features it was trained with replace `features`, so the
    run reads shards made with those features. Its codec must be the run's: tokens of another codec
    would be meaningless to it.

    Raises:
        CheckpointError: unreadable checkpoint, or a codec other than the run's.
    """
    if not cfg.init_from:
        return cfg, None
    local = cfg.path(cfg.init_from)
    ckpt = load_checkpoint(resolve_checkpoint(local if local.exists() else cfg.init_from), map_location="cpu")
    if ckpt["codec_id"] != cfg.codec.config_id:
        raise CheckpointError(f"init_from {cfg.init_from}: its tokens come from codec {ckpt['codec_id']}, this run's "
                              f"codec is {cfg.codec.config_id}; set codec to the checkpoint's")
    try:
        features = RhythmFeatureConfig.from_dict(ckpt["features"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"init_from {cfg.init_from}: invalid rhythm-feature config: {e}") from e
    arch = {k: v for k, v in ckpt["model_config"].items() if k not in TRAINING_ONLY_FIELDS}
    keep = {k: v for k, v in cfg.model.overrides.items() if k in TRAINING_ONLY_FIELDS}
    if features.config_id != cfg.features.config_id:
        print(f"[train] init_from: training with the checkpoint's features {features.config_id} "
              f"(the config had {cfg.features.config_id})", flush=True)
    cfg = dataclasses.replace(cfg, features=features,
                              model=dataclasses.replace(cfg.model, overrides={**arch, **keep}))
    return cfg, ckpt["model"]


# ---------------------------------------------------------------------------------------------
# Distributed set-up: one flag (torchrun sets RANK)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> Dist:
    if "RANK" not in os.environ:
        return Dist()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if backend == "nccl":
        torch.cuda.set_device(d.local_rank)
    return d


def _all_reduce(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t)
    return t


# ---------------------------------------------------------------------------------------------
# Shards from the catalogue
# ---------------------------------------------------------------------------------------------

_SELECT_SQL = """
    SELECT t.path, t.n_samples, t.sha256, t.tier, p.path AS prompts, p.sha256 AS prompts_sha256, p.augment_id
    FROM shards t JOIN shards p ON p.group_id = t.group_id AND p.kind = 'prompts' AND p.status = 'ok'
                               AND p.n_samples = t.n_samples
    WHERE t.kind = 'tokens' AND t.status = 'ok' AND t.split = ? AND list_contains(?, t.tier)
      AND t.codec_id = ? AND p.features_id = ? AND (? = '' OR p.augment_id = ?)
    ORDER BY t.path"""


def select_shards(cfg: TrainConfig, split: str, required: bool = True) -> tuple[list[ShardSpec], dict[str, Any]]:
    """Shard groups of ``split`` in the configured tiers: this codec's token shard zipped with the prompt
    shard of this features config (and ``data.augment_id``, when several augmentation sets exist).

    Returns the specs and a description of the selection (the query and shard checksums) for MLflow.
    """
    params = [split, list(cfg.data.tiers), cfg.codec.config_id, cfg.features.config_id, cfg.data.augment_id,
              cfg.data.augment_id]
    with Catalogue(cfg.path(cfg.data.catalogue), read_only=True) as cat:
        rows = cat.execute(_SELECT_SQL, params).dicts()
        augment_ids = sorted({r["augment_id"] for r in rows})
        if len(augment_ids) > 1:
            raise ValueError(f"the '{split}' shards have {len(augment_ids)} prompt sets for features_id="
                             f"{params[3]}: {augment_ids}; choose one with data.augment_id=...")
        if not rows and not required:
            print(f"[train] warning: no '{split}' shards match this config; validation and samples are off", flush=True)
            return [], {}
        if not rows:
            raise ValueError(_no_shards_message(cat, cfg, split, params))
    weights = cfg.data.tier_weights
    specs = [ShardSpec(url=r["path"], n_samples=int(r["n_samples"]), sha256=r["sha256"], stream=r["tier"],
                       weight=float(weights[r["tier"]]) if weights and r["tier"] in weights else None,
                       prompts=r["prompts"], prompts_sha256=r["prompts_sha256"]) for r in rows]
    if weights:  # every stream needs a weight once any has one
        specs = [s if s.weight is not None else dataclasses.replace(s, weight=0.0) for s in specs]
        specs = [s for s in specs if s.weight > 0]
    selection = {"query": _SELECT_SQL, "params": params,
                 "shards": [{"path": s.url, "sha256": s.sha256, "prompts": s.prompts,
                             "prompts_sha256": s.prompts_sha256} for s in specs]}
    return specs, selection


def _no_shards_message(cat: Catalogue, cfg: TrainConfig, split: str, params: list) -> str:
    """Says which half is missing: the codec's token shards, or a prompt set for the features config."""
    where = f"in {cfg.path(cfg.data.catalogue)}"
    tokens = cat.execute("SELECT count(*) FROM shards WHERE kind = 'tokens' AND status = 'ok' AND split = ? "
                         "AND list_contains(?, tier) AND codec_id = ?", params[:3]).rows[0][0]
    if not tokens:
        have = cat.execute("SELECT DISTINCT split, tier, codec_id FROM shards WHERE kind = 'tokens' "
                           "AND status = 'ok' ORDER BY ALL").dicts()
        return (f"no '{split}' token shards with tiers {params[1]} and codec_id={params[2]} {where}; token "
                f"shards there: {have or 'none'}. Run the pipeline with the same codec as this training config.")
    have = cat.execute("SELECT DISTINCT features_id, augment_id FROM shards WHERE kind = 'prompts' "
                       "AND status = 'ok' AND split = ? ORDER BY ALL", [split]).dicts()
    wanted = f"features_id={params[3]}" + (f", augment_id={params[4]}" if params[4] else "")
    return (f"no prompt set matches the requested features config ({wanted}) for the '{split}' token shards "
            f"{where}; prompt sets there: {have or 'none'}. Run the pipeline with this features config "
            "(it adds the prompt shards without encoding again).")


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------

@dataclass
class State:
    """Everything the loop touches (DAC's `State`): built once, saved in every checkpoint."""

    model: TRIA
    ddp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_data: ShardDataset
    train_loader: ShardLoader
    step: int = 0
    mlflow_run_id: str = ""
    best_val: float = math.inf


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False):
        cfg, self._init_weights = apply_init_from(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dist = init_distributed(self.device)
        if self.dist.enabled and self.device.startswith("cuda"):
            self.device = f"cuda:{self.dist.local_rank}"
        self.is_main = self.dist.rank == 0
        if cfg.data.batch_size % self.dist.world:
            raise ConfigError(f"data.batch_size {cfg.data.batch_size} must divide by the world size {self.dist.world}")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.use_amp = cfg.amp and self.device.startswith("cuda")

        train_specs, self.selection = select_shards(cfg, cfg.data.train_split)
        self.val_specs, _ = select_shards(cfg, cfg.data.val_split, required=False) if cfg.data.val_batches else ([], {})
        self.state = self._build_state(train_specs)
        if resume:
            self._resume()
        self.logger = self._build_logger()

    # -- construction -------------------------------------------------------------------------

    def _build_state(self, train_specs: list[ShardSpec]) -> State:
        cfg = self.cfg
        model = TRIA(cfg.model_config())
        if self._init_weights is not None:
            model.load_state_dict(self._init_weights)
            self._init_weights = None
            if self.is_main:
                print(f"[train] initialised from {cfg.init_from}", flush=True)
        model = model.to(self.device)
        ddp = DDP(model, device_ids=[self.dist.local_rank] if self.device.startswith("cuda") else None) \
            if self.dist.enabled else model
        o = cfg.optim
        optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=o.gamma)
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        reader = ReaderConfig(batch_size=cfg.data.batch_size // self.dist.world, seed=cfg.seed,
                              shuffle_buffer=cfg.data.shuffle_buffer, epoch_size=cfg.data.epoch_size)
        data = ShardDataset(train_specs, reader, rank=self.dist.rank, world_size=self.dist.world)
        # Batches arrive on the device (pinned, non-blocking, one ahead on a side stream on CUDA).
        loader = ShardLoader(data, num_workers=cfg.data.num_workers, prefetch_factor=cfg.data.prefetch_factor,
                             device=self.device)
        if self.is_main:
            print(f"[train] {cfg.name}: TRIA {cfg.model.size} ({count_parameters(model):,} parameters) on "
                  f"{self.device} x{self.dist.world}; {len(train_specs)} train shards "
                  f"({sum(s.n_samples for s in train_specs)} excerpts)", flush=True)
        return State(model, ddp, optimizer, scheduler, scaler, data, loader)

    def _build_logger(self):
        if not self.is_main:
            return NullLogger()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        console = StdoutLogger(keys=CONSOLE_METRICS, show_config=False)  # everything else: MLflow + metrics.jsonl
        loggers = [JsonlLogger(self.run_dir / "metrics.jsonl"), console]
        m = self.cfg.mlflow
        if m.tracking_uri:
            ml = MLflowLogger(m.tracking_uri, m.experiment, run_name=m.run_name or self.cfg.name,
                              run_id=m.run_id or self.state.mlflow_run_id or None, run_dir=str(self.run_dir))
            self.state.mlflow_run_id = ml.run_id
            loggers.append(ml)
            print(f"[train] MLflow run {ml.run_id} at {m.tracking_uri} (experiment {m.experiment})", flush=True)
            if ml.run_url:
                print(f"[train] MLflow run URL: {ml.run_url}", flush=True)
        logger = _Fanout(loggers)
        resolved = to_dict(self.cfg)
        logger.log_config(resolved)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        print(f"[train] resolved config: {self.run_dir / 'config.yaml'}; every metric: {self.run_dir / 'metrics.jsonl'}",
              flush=True)
        (self.run_dir / "shards.json").write_text(json.dumps(self.selection, indent=1))
        logger.log_artifact(self.run_dir / "shards.json")
        self._record_in_catalogue()
        self._log_dataset_card(logger)
        return logger

    def _log_dataset_card(self, logger) -> None:
        """Write this run's dataset card (tria/card.py) next to its checkpoints and log it to MLflow."""
        from tria.card import write_card

        try:
            path = write_card(self.cfg.path(self.cfg.data.catalogue), self.state.mlflow_run_id or f"local-{self.cfg.name}",
                              self.run_dir / "dataset_card.md")
        except Exception as e:  # the catalogue is locked by a running pipeline: training still proceeds
            print(f"[train] warning: could not write the dataset card: {e}", flush=True)
            return
        logger.log_artifact(path)
        print(f"[train] dataset card: {path}", flush=True)

    def _record_in_catalogue(self) -> None:
        try:
            with Catalogue(self.cfg.path(self.cfg.data.catalogue)) as cat:
                paths = [p for s in self.selection["shards"] for p in (s["path"], s["prompts"]) if p]
                cat.start_training_run(self.state.mlflow_run_id or f"local-{self.cfg.name}", paths,
                                       experiment=self.cfg.mlflow.experiment, name=self.cfg.name,
                                       config=to_dict(self.cfg))
        except Exception as e:  # the catalogue is locked by a running pipeline: training still proceeds
            print(f"[train] warning: could not record this run in the catalogue: {e}", flush=True)

    # -- checkpoints --------------------------------------------------------------------------

    def save(self, tag: str) -> Path | None:
        if not self.is_main:
            return None
        s = self.state
        train_state = {
            "step": s.step, "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
            "scaler": s.scaler.state_dict(), "data": s.train_loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": _np_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "mlflow_run_id": s.mlflow_run_id, "best_val": s.best_val, "config": json.dumps(to_dict(self.cfg)),
        }
        path = save_checkpoint(self.ckpt_dir / f"{tag}.pt", s.model.cfg, s.model, self.cfg.codec.config_id,
                               self.cfg.features.to_dict(), self.cfg.features.config_id, train_state)
        return path

    def _resume(self) -> None:
        if self.is_main:  # temp files of saves that a kill interrupted (save_checkpoint renames whole files)
            for stale in self.ckpt_dir.glob(".*.pt.*.tmp"):
                stale.unlink(missing_ok=True)
        path = self.ckpt_dir / "latest.pt"
        if not path.exists():
            if self.is_main:
                print(f"[train] --resume: no checkpoint at {path}, starting from step 0", flush=True)
            return
        ckpt = load_checkpoint(path, map_location="cpu")
        if ckpt["features_id"] != self.cfg.features.config_id or ckpt["codec_id"] != self.cfg.codec.config_id:
            raise CheckpointError(f"{path} was trained with features {ckpt['features_id']} / codec {ckpt['codec_id']}, "
                                  f"this config uses {self.cfg.features.config_id} / {self.cfg.codec.config_id}")
        ts = ckpt["train_state"]
        s = self.state
        s.model.load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ts["optimizer"])
        s.scheduler.load_state_dict(ts["scheduler"])
        s.scaler.load_state_dict(ts["scaler"])
        s.train_loader.load_state_dict(ts["data"])
        torch.set_rng_state(ts["rng"]["torch"])
        np.random.set_state(_np_state_from(ts["rng"]["numpy"]))
        if ts["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ts["rng"]["cuda"])
        s.step, s.mlflow_run_id, s.best_val = int(ts["step"]), ts["mlflow_run_id"], float(ts["best_val"])
        if self.is_main:
            print(f"[train] resumed from {path} at step {s.step} (data position {ts['data']})", flush=True)

    # -- the step -----------------------------------------------------------------------------

    def _masks(self, batch: dict[str, Any], step: int, train: bool, codebook: int | None = None) -> dict[str, torch.Tensor]:
        tokens = batch["tokens"]
        B = tokens.shape[0]
        # Per-example seeds: unique per (step, rank, slot) and independent of the world size layout,
        # so a resumed run draws the same masks (the authors use idx + a running offset).
        base = step * self.cfg.data.batch_size + self.dist.rank * B
        idx = [base + i for i in range(B)] if train else [10_000_000 + base + i for i in range(B)]
        mask_cfg = self.cfg.mask if train else dataclasses.replace(self.cfg.mask, p_cfg_dropout=0.0)
        allowed = allowed_codebooks(list(batch["tier"]), self.cfg.curriculum)
        if codebook is not None:  # force it where the tier allows it, else codebook 0 (the caller ignores those)
            only = torch.zeros_like(allowed)
            only[:, codebook] = allowed[:, codebook]
            only[~allowed[:, codebook], 0] = True
            allowed = only
        weights = codebook_weights(step, self.cfg.curriculum) if train else None  # val: every allowed codebook
        return build_training_batch(tokens, batch["lengths"], idx, mask_cfg, allowed, weights)

    def _forward_loss(self, batch: dict[str, Any], step: int, train: bool, codebook: int | None = None):
        tokens = batch["tokens"].to(self.device)
        feats = batch["feats"].to(self.device)
        m = self._masks({**batch, "tokens": tokens}, step, train, codebook)
        net = self.state.ddp if train else self.state.model
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
            logits = net(tokens, feats, m["codebook"], m["tokens_mask"], m["feats_mask"], m["lengths"])
        out = masked_token_loss(logits, tokens, m["tokens_mask"], m["codebook"], m["lengths"],
                                label_smoothing=self.cfg.mask.label_smoothing, normalization="authors")
        if self.cfg.mask.loss_normalization == "masked":
            # Per target token over all ranks: DDP averages gradients, so scale by world / total tokens.
            total = _all_reduce(out.n_tokens.detach().float().clone(), self.dist).clamp_min(1)
            out.loss = out.loss_sum * self.dist.world / total
        return out, m

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        s = self.state
        s.ddp.train()
        out, m = self._forward_loss(batch, s.step, train=True)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(out.loss).backward()
        s.scaler.unscale_(s.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), self.cfg.optim.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        lr = s.scheduler.get_last_lr()[0]
        s.scheduler.step()
        stats = torch.cat([out.loss.detach().float().reshape(1) / self.dist.world,
                           out.codebook_loss_sum.float(), out.codebook_count.float(), out.codebook_correct.float(),
                           m["mask_prop"].float().mean().reshape(1) / self.dist.world])
        stats = _all_reduce(stats, self.dist).cpu()
        K = out.codebook_count.numel()
        metrics = {"train/loss": stats[0].item(), "train/grad_norm": float(grad_norm), "train/lr": lr,
                   "mask/rate": stats[-1].item()}
        metrics.update(_codebook_metrics("train", stats[1:1 + K], stats[1 + K:1 + 2 * K], stats[1 + 2 * K:1 + 3 * K]))
        return metrics

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss on a fixed validation set: the first ``val_batches`` batches of the val shards, unshuffled,
        fixed mask seeds, no CFG dropout."""
        if not self.val_specs:
            return {}
        cfg = self.cfg
        reader = ReaderConfig(batch_size=cfg.data.batch_size // self.dist.world, seed=0, shuffle=False, drop_last=False)
        data = ShardDataset(self.val_specs, reader, rank=self.dist.rank, world_size=self.dist.world)
        self.state.model.eval()
        K = self.state.model.cfg.n_codebooks
        tot = torch.zeros(2 + 3 * K)
        for i, batch in enumerate(ShardLoader(data)):
            if i >= cfg.data.val_batches:
                break
            out, _ = self._forward_loss(batch, i, train=False)
            per_cb = [out.codebook_loss_sum, out.codebook_count, out.codebook_correct]
            if cfg.val_every_codebook:
                per_cb = [torch.zeros_like(t) for t in per_cb]
                for k in range(K):
                    o, _ = self._forward_loss(batch, i, train=False, codebook=k)
                    for acc, t in zip(per_cb, (o.codebook_loss_sum, o.codebook_count, o.codebook_correct)):
                        acc[k] += t[k]
            tot += torch.cat([out.loss_sum.float().reshape(1).cpu(), out.n_tokens.float().reshape(1).cpu(),
                              *[t.float().cpu() for t in per_cb]])
        tot = _all_reduce(tot.to(self.device), self.dist).cpu()
        metrics = {"val/loss": (tot[0] / tot[1].clamp_min(1)).item()}  # per target token
        metrics.update(_codebook_metrics("val", tot[2:2 + K], tot[2 + K:2 + 2 * K], tot[2 + 2 * K:2 + 3 * K]))
        return metrics

    @torch.no_grad()
    def write_samples(self) -> list[Path]:
        """Decode a few validation examples: prefix = first (1 - max_span_prop) of the frames, the rest
        generated from their own rhythm features (SPEC 4.2 "samples")."""
        if not (self.is_main and self.val_specs and self.cfg.n_samples):
            return []
        from tria.audio import save_audio

        reader = ReaderConfig(batch_size=self.cfg.n_samples, seed=0, shuffle=False, drop_last=False)
        batch = next(iter(ShardLoader(ShardDataset(self.val_specs, reader))))
        tokens, feats, lengths = batch["tokens"], batch["feats"], batch["lengths"]
        B, K, T = tokens.shape
        prefix = int(T * (1 - self.cfg.mask.max_span_prop))
        t = torch.arange(T)
        tokens_mask = (t < prefix)[None, None].expand(B, K, T).clone()
        feats_mask = (t >= prefix)[None].expand(B, T).clone()
        out = generate(self.state.model, tokens, feats, tokens_mask, feats_mask, lengths, self.cfg.sampler,
                       seed=self.cfg.seed)
        codec = self._codec()
        audio = codec.decode(out.cpu())
        folder = self.run_dir / "samples" / f"step{self.state.step:07d}"
        paths = []
        for i in range(B):
            n = int(lengths[i]) * codec.hop_length
            y = audio[i, 0, :n]
            y = y / max(1.0, float(y.abs().max()))
            paths.append(save_audio(folder / f"{batch['keys'][i]}.wav", y, codec.sample_rate))
        return paths

    def _codec(self):
        if not hasattr(self, "_codec_obj"):
            self._codec_obj = self.cfg.codec.load(device=self.device)
        return self._codec_obj

    # -- the loop -----------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        cfg, s = self.cfg, self.state
        last: dict[str, float] = {}
        t_wait = t_step = 0.0
        n_seen = 0
        t_log = time.perf_counter()
        progress = _progress(self.is_main, s.step, cfg.num_iters)
        while s.step < cfg.num_iters:
            t0 = time.perf_counter()
            for batch in s.train_loader:
                t1 = time.perf_counter()
                metrics = self.train_step(batch)
                s.step += 1
                if cfg.data.record_keys:
                    self._record_keys(batch)
                t2 = time.perf_counter()
                t_wait, t_step = t_wait + (t1 - t0), t_step + (t2 - t1)
                n_seen += batch["tokens"].shape[0] * self.dist.world
                progress.update(1)
                last = metrics
                if s.step % cfg.log_every == 0 or s.step == cfg.num_iters:
                    dt = time.perf_counter() - t_log
                    T = batch["tokens"].shape[-1]
                    metrics.update({"data/examples_per_s": n_seen / dt, "data/tokens_per_s": n_seen * T * 9 / dt,
                                    "data/wait_s": t_wait, "data/step_s": t_step,
                                    "data/wait_fraction": t_wait / max(t_wait + t_step, 1e-9),
                                    "data/epoch": s.train_data.epoch})
                    self.logger.log_dict(metrics, s.step)
                    t_wait = t_step = 0.0
                    n_seen = 0
                    t_log = time.perf_counter()
                self._periodic(s.step)
                if s.step >= cfg.num_iters:
                    break
                t0 = time.perf_counter()
        progress.close()
        return last

    def _record_keys(self, batch: dict[str, Any]) -> None:
        """One line per step and rank: which samples it trained on (audits order, resume, elasticity)."""
        if not hasattr(self, "_keys_file"):
            path = self.run_dir / "keys" / f"rank{self.dist.rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._keys_file = path.open("a")
        line = {"step": self.state.step, "epoch": batch["epoch"], "position": batch["position"], "keys": batch["keys"]}
        self._keys_file.write(json.dumps(line) + "\n")
        self._keys_file.flush()

    def _periodic(self, step: int) -> None:
        cfg = self.cfg
        if cfg.val_every and (step % cfg.val_every == 0 or step == cfg.num_iters):
            val = self.validate()
            if val:
                self.logger.log_dict(val, step)
                if val["val/loss"] < self.state.best_val:
                    self.state.best_val = val["val/loss"]
                    self.save("best")
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == cfg.num_iters):
            for p in self.write_samples():
                self.logger.log_artifact(p)
        if step % cfg.ckpt_every == 0 or step == cfg.num_iters:
            path = self.save("latest")
            if path is not None and step == cfg.num_iters:
                self.logger.log_artifact(path)
        if self.dist.enabled:
            dist.barrier()

    def close(self, status: str = "done") -> None:
        self.state.train_loader.close()
        if hasattr(self, "_keys_file"):
            self._keys_file.close()
        for lg in getattr(self.logger, "loggers", []):  # a failed run must not read FINISHED in MLflow
            if isinstance(lg, MLflowLogger):
                lg.close("FINISHED" if status == "done" else "FAILED")
        self.logger.close()
        if self.is_main and self.state.mlflow_run_id:
            try:
                with Catalogue(self.cfg.path(self.cfg.data.catalogue)) as cat:
                    cat.finish_training_run(self.state.mlflow_run_id, status)
            except Exception as e:
                print(f"[train] warning: could not update the catalogue: {e}", flush=True)
        if self.dist.enabled:
            dist.destroy_process_group()


class _Fanout:
    """Sends every call to several loggers (JSONL + stdout + MLflow)."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            for lg in self.loggers:
                getattr(lg, name)(*args, **kwargs)
        return call


def _codebook_metrics(prefix: str, loss_sum: torch.Tensor, count: torch.Tensor, correct: torch.Tensor) -> dict:
    out = {}
    for k in torch.nonzero(count).flatten().tolist():
        out[f"{prefix}/loss_cb{k}"] = (loss_sum[k] / count[k]).item()
        out[f"{prefix}/acc_cb{k}"] = (correct[k] / count[k]).item()
        out[f"{prefix}/frac_cb{k}"] = (count[k] / count.sum()).item()
    return out


def _np_state() -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
            "gauss": gauss}


def _np_state_from(d: dict) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), int(d["pos"]), int(d["has_gauss"]), float(d["gauss"]))


class _progress:
    """tqdm on rank 0 (the step counter), nothing elsewhere."""

    def __init__(self, on: bool, start: int, total: int):
        self.bar = None
        if on:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
                            mininterval=2.0, file=sys.stderr)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tria.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="training YAML (conf/train/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. num_iters=100 data.batch_size=8")
    ap.add_argument("--resume", action="store_true", help="continue from <out_dir>/<name>/checkpoints/latest.pt")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = ap.parse_intermixed_args(argv)  # so that `CONFIG --resume key=value` works too
    try:
        cfg = load_train_config(args.config, args.overrides)
        cfg.model_config()
    except (ConfigError, ValueError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    try:
        trainer = Trainer(cfg, resume=args.resume)
    except CheckpointError as e:  # a corrupt or mismatched latest.pt: say so, not a traceback
        print(f"checkpoint error: {e}", file=sys.stderr)
        return 2
    status = "failed"
    try:
        last = trainer.train()
        status = "done"
        if trainer.is_main:
            print(f"[train] done: step {trainer.state.step}, loss {last.get('train/loss', float('nan')):.4f}; "
                  f"checkpoint {trainer.ckpt_dir / 'latest.pt'}", flush=True)
    finally:
        trainer.close(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
