"""Sweeps: a set of training runs launched, resumed and compared as one MLflow experiment.

    python -m tria.sweep conf/sweep/curriculum_demo.yaml --tracking-uri http://127.0.0.1:5000 \\
        [--steps N] [--parallel P] [--nproc N] [--prepare] [--no-eval] [key=value ...]
    python -m tria.sweep --report RUN_ID --tracking-uri http://127.0.0.1:5000 [--out DIR]

A sweep file (``conf/sweep/*.yaml``, :class:`SweepConfig`) names a base training config and its
variants; each variant is a config file, overrides, or both::

    name: curriculum
    experiment: tria-curriculum
    base: conf/train/curriculum_uniform.yaml       # for variants that name no config
    overrides: []                                  # for every variant
    variants:
      uniform: {config: conf/train/curriculum_uniform.yaml}
      coarse_first: {config: conf/train/curriculum_coarse_first.yaml, overrides: [curriculum.end_step=100]}
    eval: {set: conf/eval/demo.yaml, overrides: [max_pairs=4]}   # optional: tria.evaluate per variant
    pipeline: conf/pipeline/demo.yaml                            # optional: --prepare makes the shards

A variant's config is ``config`` (else ``base``), then the sweep's ``overrides``, the variant's
``overrides``, the command line's ``key=value`` and ``--steps`` (``num_iters``), in that order.

In MLflow the sweep is one parent run (tags ``tria.sweep``, ``tria.sweep_hash``) in the sweep's
experiment, and each variant one child run (tag ``mlflow.parentRunId``, ``tria.variant``) that
``python -m tria.train`` (or ``torchrun``, ``--nproc``) logs into through ``mlflow.run_id``. Each
variant trains in its own folder ``<out_dir>/<name>-<hash>/<variant>`` with its own checkpoints.

Resuming is decided from MLflow, not from a state file: a rerun of the same sweep (same resolved
configs, hence the same hash) finds its parent run; a child run that is FINISHED is skipped, any
other child (RUNNING after a kill, FAILED) is restarted with ``--resume`` from its own checkpoint,
and a variant without a child run starts. Changing a config changes the hash and starts a new
parent run (and new folders), so runs of different configs never mix.

At the end (and with ``--report``) the report is read back through the MLflow API: a markdown table
and a PNG of per-codebook validation loss and accuracy per variant, the evaluation harness's rhythm
and timbre numbers with their confidence intervals, wall time and tokens/s. Both are logged as
artifacts of the parent run (``report/``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tria.config import ConfigError, apply_overrides, from_dict, load_yaml, resolve_path, to_dict
from tria.tracking import ensure_experiment, experiment_url

PARENT_ROLE, CHILD_ROLE = "parent", "variant"
# DuckDB lets one process write a file, and no process read it meanwhile: a trainer that starts while a
# pipeline or another run's bookkeeping holds the catalogue fails with this; the launcher retries it.
CATALOGUE_LOCKED = "Could not set lock on file"
LOCK_RETRIES, LOCK_WAIT_S = 5, 20.0
N_CODEBOOKS = 9
# The evaluation harness's per-output means (with bootstrap CIs) and the per-condition FD.
EVAL_METRICS = ("onset_f1", "rhythm_corr", "timbre_cosine", "fd")


@dataclass(frozen=True)
class VariantConfig:
    config: str = ""  # training config file ("" = the sweep's base)
    overrides: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class EvalSection:
    set: str = ""  # evaluation set (conf/eval/*.yaml); "" = no evaluation
    overrides: tuple[str, ...] = ()
    checkpoint: str = "latest"  # latest | best


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    experiment: str = ""  # MLflow experiment ("" = "sweep-<name>")
    description: str = ""
    base: str = ""
    overrides: tuple[str, ...] = ()
    variants: dict = field(default_factory=dict)  # name -> VariantConfig fields
    eval: EvalSection = field(default_factory=EvalSection)
    pipeline: str = ""  # pipeline config that builds the shards of every variant (--prepare)
    pipeline_overrides: tuple[str, ...] = ()
    out_dir: str = "runs/sweep"
    root: str = ""  # base of relative paths ("" = $TRIA_ROOT or the current folder)

    def __post_init__(self) -> None:
        if not self.variants:
            raise ValueError("a sweep needs at least one variant")
        bad = [n for n in self.variants if not str(n).replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise ValueError(f"variant names must be letters, digits, '_' or '-': {bad}")

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"sweep-{self.name}"

    def variant(self, name: str) -> VariantConfig:
        return from_dict(VariantConfig, self.variants[name] or {}, f"variants.{name}.")


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a sweep file (``include:`` allowed; variants merge by name) and apply ``key=value`` to it."""
    return from_dict(SweepConfig, apply_overrides(load_yaml(path), overrides))


@dataclass(frozen=True)
class Variant:
    """One resolved variant: its name, position and full training config (a plain dict)."""

    name: str
    index: int
    config: dict
    description: str = ""


def resolve_variants(sweep: SweepConfig, train_overrides: Sequence[str] = (), steps: int | None = None,
                     tracking_uri: str = "") -> list[Variant]:
    """Every variant's training config, validated (a bad variant fails the sweep before any training)."""
    from tria.train import TrainConfig

    out = []
    for i, name in enumerate(sweep.variants):
        v = sweep.variant(name)
        source = v.config or sweep.base
        if not source:
            raise ConfigError(f"variant {name!r} names no config and the sweep has no base")
        data = load_yaml(resolve_path(sweep.root, source))
        data = apply_overrides(data, [*sweep.overrides, *v.overrides, *train_overrides])
        if steps is not None:
            data["num_iters"] = int(steps)
        data["name"] = name
        data.setdefault("mlflow", {})
        data["mlflow"] = {**data["mlflow"], "experiment": sweep.experiment_name, "run_name": name}
        if tracking_uri:
            data["mlflow"]["tracking_uri"] = tracking_uri
        if sweep.root and not data.get("root"):
            data["root"] = sweep.root
        try:
            cfg = from_dict(TrainConfig, data, f"variants.{name}: ")
            cfg.model_config()
        except (ConfigError, ValueError) as e:
            raise ConfigError(f"variant {name!r}: {e}") from e
        out.append(Variant(name, i, to_dict(cfg), v.description))
    return out


def sweep_hash(variants: Sequence[Variant]) -> str:
    """Identity of a sweep: the variants' resolved configs, less where they are logged and written."""
    plain = {v.name: {k: val for k, val in v.config.items() if k not in ("mlflow", "out_dir", "root", "name")}
             for v in variants}
    return hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------------------------
# MLflow: the parent run, the child runs, and what is done


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def find_parent(client, experiment_id: str, name: str, digest: str):
    """The newest live parent run of this sweep and hash, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`tria.sweep` = '{name}' and tags.`tria.sweep_hash` = '{digest}' "
                      f"and tags.`tria.sweep_role` = '{PARENT_ROLE}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def child_runs(client, parent_run) -> dict[str, Any]:
    """The parent's live child runs by variant name (the newest one when a variant has several)."""
    runs = client.search_runs([parent_run.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run.info.run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    return {r.data.tags.get("tria.variant", r.info.run_name): r for r in runs}


def variant_state(run, needs_eval: bool) -> str:
    """"new" (no child run), "train" (unfinished: resume it), "eval" (trained, not evaluated), "done"."""
    if run is None:
        return "new"
    if run.info.status != "FINISHED":
        return "train"
    if needs_eval and "eval/onset_f1" not in run.data.metrics and run.data.tags.get("tria.eval") != "failed":
        return "eval"
    return "done"


# ----------------------------------------------------------------------------------------------
# Launching


@dataclass
class Launcher:
    """Runs one variant's trainer (and evaluation) as subprocesses; output goes to a log file."""

    sweep: SweepConfig
    sweep_dir: Path
    tracking_uri: str
    parallel: int = 1
    nproc: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        threads = max(1, (os.cpu_count() or 1) // max(1, self.parallel * self.nproc))
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _run(self, name: str, cmd: list[str], log: Path) -> int:
        """Runs ``cmd`` (again, after a wait, when it failed on a locked catalogue)."""
        for attempt in range(LOCK_RETRIES + 1):
            rc, locked = self._run_once(name, cmd, log)
            if rc == 0 or not locked or attempt == LOCK_RETRIES:
                return rc
            with self.lock:
                print(f"[sweep] {name}: the catalogue was locked by another process; retrying in {LOCK_WAIT_S:.0f} s",
                      flush=True)
            time.sleep(LOCK_WAIT_S)
        return rc

    def _run_once(self, name: str, cmd: list[str], log: Path) -> tuple[int, bool]:
        """Runs ``cmd``; its ``[train]``/``step`` lines are echoed with the variant's name. Returns the exit
        code and whether the catalogue was locked."""
        locked = False
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"\n$ {' '.join(cmd)}\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self._env(),
                                    text=True, errors="replace", bufsize=1)
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                f.flush()
                locked = locked or CATALOGUE_LOCKED in line
                for part in line.rstrip().split("\r"):  # tqdm's bar and a step line can share a line
                    if part.startswith(("[train]", "step ", "[eval]", "config error", "checkpoint error", "error")):
                        with self.lock:
                            print(f"  [{name}] {part}", flush=True)
            return proc.wait(), locked

    def train(self, v: Variant, run_id: str, resume: bool) -> int:
        cfg_path = self.sweep_dir / f"{v.name}.yaml"
        cfg_path.write_text(yaml.safe_dump(v.config, sort_keys=False))
        launcher = [sys.executable, "-m", "tria.train"]
        if self.nproc > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={self.nproc}", "-m", "tria.train"]
        cmd = [*launcher, str(cfg_path), f"mlflow.run_id={run_id}"] + (["--resume"] if resume else [])
        return self._run(v.name, cmd, self.sweep_dir / f"{v.name}.log")

    def evaluate(self, v: Variant, run_dir: Path) -> tuple[int, Path]:
        ev = self.sweep.eval
        out = run_dir / "eval"
        ckpt = run_dir / "checkpoints" / f"{ev.checkpoint}.pt"
        cmd = [sys.executable, "-m", "tria.evaluate", "--checkpoint", str(ckpt),
               "--set", str(resolve_path(self.sweep.root, ev.set)), "--out", str(out),
               "--device", str(v.config.get("device", "auto")), *ev.overrides]
        return self._run(v.name, cmd, self.sweep_dir / f"{v.name}.log"), out


def _run_dir(v: Variant) -> Path:
    return resolve_path(v.config.get("root", ""), v.config["out_dir"]) / v.name


def read_eval_summary(path: Path) -> dict[str, float]:
    """The first row of tria.evaluate's summary.csv as ``eval/<column>`` floats (blank cells left out)."""
    with open(path, newline="") as f:
        row = next(csv.DictReader(f))
    out = {}
    for k, v in row.items():
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(x):
            out[f"eval/{k}"] = x
    return out


def _log_eval(client, run_id: str, out: Path) -> dict[str, float]:
    from mlflow.entities import Metric

    metrics = read_eval_summary(out / "summary.csv")
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
    for name in ("summary.csv", "results.md"):
        if (out / name).exists():
            client.log_artifact(run_id, str(out / name), "eval")
    return metrics


def run_variant(launcher: Launcher, client, parent, v: Variant, child, experiment_id: str) -> str:
    """Brings one variant to "done" (train, resume, evaluate as needed); returns its final state."""
    needs_eval = bool(launcher.sweep.eval.set)
    state = variant_state(child, needs_eval)
    run_dir = _run_dir(v)
    if state == "done":
        print(f"[sweep] {v.name}: finished earlier (run {child.info.run_id}), skipped", flush=True)
        return "done"
    if state == "new":
        if run_dir.exists():  # a folder without a child run (its run was deleted): keep it, aside
            aside = run_dir.with_name(f"{run_dir.name}.orphan-{int(time.time())}")
            run_dir.rename(aside)
            print(f"[sweep] {v.name}: {run_dir} had no MLflow run; moved to {aside}", flush=True)
        child = client.create_run(experiment_id, run_name=v.name, tags={
            "mlflow.parentRunId": parent.info.run_id, "tria.sweep": launcher.sweep.name,
            "tria.sweep_role": CHILD_ROLE, "tria.variant": v.name, "tria.variant_index": str(v.index),
            "mlflow.note.content": v.description or f"variant {v.name} of sweep {launcher.sweep.name}"})
    run_id = child.info.run_id
    if state in ("new", "train"):
        how = "starting" if state == "new" else f"resuming ({child.info.status})"
        print(f"[sweep] {v.name}: {how} run {run_id} in {run_dir}", flush=True)
        t0 = time.perf_counter()
        rc = launcher.train(v, run_id, resume=state == "train")
        if rc != 0:
            client.set_terminated(run_id, "FAILED")
            print(f"[sweep] {v.name}: trainer exited with {rc}; see {launcher.sweep_dir / (v.name + '.log')}",
                  flush=True)
            return "failed"
        client.set_tag(run_id, "tria.train_seconds_last", f"{time.perf_counter() - t0:.1f}")
        if client.get_run(run_id).info.status != "FINISHED":
            client.set_terminated(run_id, "FINISHED")  # e.g. the MLflow buffer was replayed later
    if needs_eval:
        print(f"[sweep] {v.name}: evaluating ({launcher.sweep.eval.set})", flush=True)
        rc, out = launcher.evaluate(v, run_dir)
        if rc != 0 or not (out / "summary.csv").exists():
            client.set_tag(run_id, "tria.eval", "failed")
            print(f"[sweep] {v.name}: evaluation failed (exit {rc}); the report leaves it blank", flush=True)
        else:
            m = _log_eval(client, run_id, out)
            client.set_tag(run_id, "tria.eval", "done")
            print(f"[sweep] {v.name}: onset F1 {m.get('eval/onset_f1', float('nan')):.3f}, "
                  f"timbre cos {m.get('eval/timbre_cosine', float('nan')):.3f}", flush=True)
    return "done"


def prepare_data(sweep: SweepConfig, variants: Sequence[Variant]) -> None:
    """One pipeline run per distinct (features, codec) of the variants, on ``sweep.pipeline``.

    The pipeline is idempotent, so a feature config whose shards exist costs only the check. The
    pipeline gets the variant's exact feature and codec dicts, so its ids match the training config.
    """
    if not sweep.pipeline:
        raise ConfigError("--prepare needs `pipeline:` (a pipeline config) in the sweep file")
    seen: dict[str, list[str]] = {}
    for v in variants:
        key = json.dumps([v.config["features"], v.config["codec"]], sort_keys=True)
        seen.setdefault(key, []).append(v.name)
    for i, (key, names) in enumerate(seen.items(), 1):
        features, codec = json.loads(key)
        root = sweep.root or os.environ.get("TRIA_ROOT") or os.getcwd()
        cmd = [sys.executable, "-m", "pipelines.run", str(resolve_path(sweep.root, sweep.pipeline)),
               f"root={root}", "ray.address=local", f"prompts.features={json.dumps(features)}",
               f"codec={json.dumps({k: codec[k] for k in ('weights', 'size', 'seed')})}",
               *sweep.pipeline_overrides]
        print(f"[sweep] data {i}/{len(seen)} for {', '.join(names)}: {' '.join(cmd[1:4])} ...", flush=True)
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise RuntimeError(f"the pipeline for {names} exited with {rc}")


def run_sweep(sweep: SweepConfig, tracking_uri: str, train_overrides: Sequence[str] = (),
              steps: int | None = None, parallel: int = 1, nproc: int = 1, prepare: bool = False,
              evaluate: bool = True, report: bool = True) -> str:
    """Runs (or resumes) a sweep; returns the parent run id."""
    if not tracking_uri:
        raise ConfigError("a sweep needs an MLflow tracking URI: --tracking-uri or $MLFLOW_TRACKING_URI")
    if not evaluate:
        sweep = dataclasses.replace(sweep, eval=EvalSection())
    variants = resolve_variants(sweep, train_overrides, steps, tracking_uri)
    digest = sweep_hash(variants)
    out_dir = f"{sweep.out_dir}/{sweep.name}-{digest}"
    variants = [dataclasses.replace(v, config={**v.config, "out_dir": out_dir}) for v in variants]
    sweep_dir = resolve_path(sweep.root, out_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if prepare:
        prepare_data(sweep, variants)

    client = _client(tracking_uri)
    experiment_id = ensure_experiment(client, sweep.experiment_name)
    parent = find_parent(client, experiment_id, sweep.name, digest)
    if parent is None:
        parent = client.create_run(experiment_id, run_name=sweep.name, tags={
            "tria.sweep": sweep.name, "tria.sweep_hash": digest, "tria.sweep_role": PARENT_ROLE,
            "mlflow.note.content": sweep.description or f"sweep {sweep.name}: {', '.join(sweep.variants)}"})
        from mlflow.entities import Param

        params = {"sweep.name": sweep.name, "sweep.hash": digest, "sweep.variants": ",".join(sweep.variants),
                  "sweep.steps": str(variants[0].config["num_iters"]), "sweep.eval_set": sweep.eval.set or "none",
                  "sweep.dir": str(sweep_dir)}
        client.log_batch(parent.info.run_id, params=[Param(k, v) for k, v in params.items()])
        (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(sweep))), sort_keys=False))
        client.log_artifact(parent.info.run_id, str(sweep_dir / "sweep.yaml"))
        print(f"[sweep] {sweep.name}: new parent run {parent.info.run_id} (hash {digest})", flush=True)
    else:
        if parent.info.status != "RUNNING":
            client.update_run(parent.info.run_id, "RUNNING")
        print(f"[sweep] {sweep.name}: resuming parent run {parent.info.run_id} (hash {digest})", flush=True)
    parent_id = parent.info.run_id
    print(f"[sweep] MLflow: {experiment_url(tracking_uri, experiment_id, parent_id)}", flush=True)

    children = child_runs(client, parent)
    launcher = Launcher(sweep, sweep_dir, tracking_uri, parallel, nproc)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [pool.submit(run_variant, launcher, client, parent, v, children.get(v.name), experiment_id)
                   for v in variants]
        states = [f.result() for f in futures]
    n_failed = states.count("failed")
    print(f"[sweep] {sweep.name}: {len(states) - n_failed}/{len(states)} variants done in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    if report:
        md, png = write_report(client, parent_id, sweep_dir / "report")
        print(md.read_text(), flush=True)
        print(f"[sweep] report: {md}, {png} (also artifacts of run {parent_id})", flush=True)
    client.set_terminated(parent_id, "FAILED" if n_failed else "FINISHED")
    return parent_id


# ----------------------------------------------------------------------------------------------
# The report, read back from MLflow


def _history_sum(client, run_id: str, key: str) -> float:
    return float(sum(m.value for m in client.get_metric_history(run_id, key)))


def _history_mean(client, run_id: str, key: str) -> float:
    values = [m.value for m in client.get_metric_history(run_id, key)]
    return float(sum(values) / len(values)) if values else float("nan")


def report_rows(client, parent_run_id: str) -> tuple[Any, list[dict[str, Any]]]:
    """The parent run and one row per child: final val metrics, eval summary, times, throughput."""
    parent = client.get_run(parent_run_id)
    if parent.data.tags.get("tria.sweep_role") != PARENT_ROLE:
        raise ValueError(f"run {parent_run_id} is not a sweep's parent run (no tria.sweep_role=parent tag)")
    children = sorted(child_runs(client, parent).values(),
                      key=lambda r: int(r.data.tags.get("tria.variant_index", 0)))
    rows = []
    for run in children:
        m, p, rid = run.data.metrics, run.data.params, run.info.run_id
        end = run.info.end_time or int(time.time() * 1000)
        row: dict[str, Any] = {
            "variant": run.data.tags.get("tria.variant", run.info.run_name), "run_id": rid,
            "status": run.info.status, "n_coarse": int(p.get("curriculum.n_coarse", 4)),
            "steps": int(max((h.step for h in client.get_metric_history(rid, "train/loss")), default=0)),
            "val_loss": m.get("val/loss", float("nan")),
            "wall_s": (end - run.info.start_time) / 1000,
            "train_s": _history_sum(client, rid, "data/step_s") + _history_sum(client, rid, "data/wait_s"),
            "tokens_per_s": _history_mean(client, rid, "data/tokens_per_s"),
        }
        for k in range(N_CODEBOOKS):
            row[f"loss_cb{k}"] = m.get(f"val/loss_cb{k}", float("nan"))
            row[f"acc_cb{k}"] = m.get(f"val/acc_cb{k}", float("nan"))
        for name in EVAL_METRICS:
            for suffix in ("", "_ci_low", "_ci_high"):
                row[f"{name}{suffix}"] = m.get(f"eval/{name}{suffix}", float("nan"))
        row["eval_outputs"] = m.get("eval/n_outputs", float("nan"))
        rows.append(row)
    return parent, rows


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _cell(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]]


def _ci(row: Mapping[str, Any], name: str) -> str:
    v, lo, hi = row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    if math.isnan(v):
        return ""
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if not math.isnan(lo) else f"{v:.3f}"


def report_markdown(parent, rows: list[dict[str, Any]]) -> str:
    """The report's tables: summary, per-codebook validation loss and accuracy, evaluation with CIs."""
    name = parent.data.tags.get("tria.sweep", parent.info.run_name)
    out = [f"# Sweep `{name}` (parent run `{parent.info.run_id}`)", ""]
    n_coarse = rows[0]["n_coarse"] if rows else 4
    coarse, fine = range(n_coarse), range(n_coarse, N_CODEBOOKS)
    out += [f"Validation metrics are the last logged values (fixed validation set; with `val_every_codebook` every "
            "excerpt on every codebook, val loss itself on one drawn codebook); "
            f"coarse = codebooks 0-{n_coarse - 1}, fine = {n_coarse}-{N_CODEBOOKS - 1}. "
            "wall = MLflow run start to end (includes waits after a kill); train = time in training steps "
            "and data waits.", ""]
    out += _table(["variant", "status", "steps", "val loss", "coarse loss", "fine loss", "coarse acc",
                   "fine acc", "wall s", "train s", "tokens/s"],
                  [[r["variant"], r["status"], r["steps"], r["val_loss"],
                    _mean([r[f"loss_cb{k}"] for k in coarse]), _mean([r[f"loss_cb{k}"] for k in fine]),
                    _mean([r[f"acc_cb{k}"] for k in coarse]), _mean([r[f"acc_cb{k}"] for k in fine]),
                    f"{r['wall_s']:.0f}", f"{r['train_s']:.0f}", f"{r['tokens_per_s']:.0f}"] for r in rows])
    cbs = [f"cb{k}" for k in range(N_CODEBOOKS)]
    out += ["", "## Validation loss per codebook", ""]
    out += _table(["variant", *cbs], [[r["variant"], *[r[f"loss_cb{k}"] for k in range(N_CODEBOOKS)]] for r in rows])
    out += ["", "## Validation accuracy per codebook", ""]
    out += _table(["variant", *cbs], [[r["variant"], *[r[f"acc_cb{k}"] for k in range(N_CODEBOOKS)]] for r in rows])
    if any(not math.isnan(r["onset_f1"]) for r in rows):
        out += ["", "## Evaluation (tria.evaluate: mean [95% bootstrap CI over pairs])", ""]
        out += _table(["variant", "onset F1", "rhythm corr", "timbre cosine", "FD", "outputs"],
                      [[r["variant"], *[_ci(r, n) for n in EVAL_METRICS],
                        "" if math.isnan(r["eval_outputs"]) else int(r["eval_outputs"])] for r in rows])
    return "\n".join(out) + "\n"


def report_figure(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """PNG: per-codebook val loss and accuracy per variant (fine codebooks shaded), eval metrics with CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_eval = any(not math.isnan(r["onset_f1"]) for r in rows)
    fig, axes = plt.subplots(1, 3 if has_eval else 2, figsize=(15 if has_eval else 10, 4))
    ks = list(range(N_CODEBOOKS))
    n_coarse = rows[0]["n_coarse"] if rows else 4
    for ax, key, label in ((axes[0], "loss", "val loss"), (axes[1], "acc", "val accuracy")):
        for r in rows:
            ax.plot(ks, [r[f"{key}_cb{k}"] for k in ks], marker="o", label=r["variant"])
        ax.axvspan(n_coarse - 0.5, N_CODEBOOKS - 0.5, color="0.9", zorder=0)
        ax.set_xticks(ks)
        ax.set_xlabel("codebook (shaded: fine)")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per codebook")
    axes[0].legend(fontsize=8)
    if has_eval:
        ax = axes[2]
        width = 0.8 / max(1, len(rows))
        metrics = ("onset_f1", "rhythm_corr", "timbre_cosine")
        for i, r in enumerate(rows):
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(metrics))]
            vals = [r[m] for m in metrics]
            err = [[max(0.0, r[m] - r[f"{m}_ci_low"]) if not math.isnan(r[f"{m}_ci_low"]) else 0 for m in metrics],
                   [max(0.0, r[f"{m}_ci_high"] - r[m]) if not math.isnan(r[f"{m}_ci_high"]) else 0 for m in metrics]]
            ax.bar(xs, vals, width, yerr=err, capsize=3, label=r["variant"])
        ax.set_xticks(range(len(metrics)))
        ax.set_xticklabels(["onset F1", "rhythm corr", "timbre cos"])
        ax.set_title("evaluation (95% CI)")
        ax.axhline(0, color="k", lw=0.5)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(client, parent_run_id: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Reads the sweep back from MLflow, writes ``report.md``, ``report.png``, ``report.json`` to
    ``out_dir`` and logs them to the parent run under ``report/``."""
    parent, rows = report_rows(client, parent_run_id)
    if not rows:
        raise ValueError(f"sweep run {parent_run_id} has no child runs yet")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "report.md"
    md.write_text(report_markdown(parent, rows))
    png = report_figure(rows, out_dir / "report.png", f"sweep {parent.data.tags.get('tria.sweep', '')}")
    (out_dir / "report.json").write_text(json.dumps(rows, indent=1))
    for path in (md, png, out_dir / "report.json"):
        client.log_artifact(parent_run_id, str(path), "report")
    return md, png


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tria.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", nargs="?", help="sweep file (conf/sweep/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of every variant's training config")
    ap.add_argument("--steps", type=int, help="num_iters of every variant")
    ap.add_argument("--parallel", type=int, default=1, help="variants trained at the same time")
    ap.add_argument("--nproc", type=int, default=1, help="processes per variant (torchrun --standalone)")
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", ""))
    ap.add_argument("--prepare", action="store_true", help="run the sweep's pipeline for every feature config first")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation harness")
    ap.add_argument("--report", metavar="RUN", help="only write the report of this parent run id")
    ap.add_argument("--out", help="report folder (--report; default runs/sweep/report-<RUN>)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a sweep-file key")
    args = ap.parse_intermixed_args(argv)
    try:
        if args.report:
            if not args.tracking_uri:
                raise ConfigError("--report needs --tracking-uri or $MLFLOW_TRACKING_URI")
            md, png = write_report(_client(args.tracking_uri), args.report,
                                   args.out or f"runs/sweep/report-{args.report[:8]}")
            print(md.read_text())
            print(f"[sweep] report: {md}, {png} (logged to run {args.report})")
            return 0
        if not args.sweep:
            ap.error("give a sweep file, or --report RUN")
        if args.parallel < 1 or args.nproc < 1:
            raise ConfigError("--parallel and --nproc must be >= 1")
        sweep = load_sweep(args.sweep, args.set)
        failed = run_sweep(sweep, args.tracking_uri, args.overrides, args.steps, args.parallel, args.nproc,
                           args.prepare, not args.no_eval)
        status = _client(args.tracking_uri).get_run(failed).info.status
        return 0 if status == "FINISHED" else 1
    except (ConfigError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
