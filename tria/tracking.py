"""Metric loggers behind one small interface: MLflow, stdout, JSON lines, and a no-op.

The trainer talks to a :class:`MetricLogger` only (``log``, ``log_dict``, ``log_config``, ``close``, plus
``log_artifact``), so MLflow stays out of the training loop and tests can use :class:`NullLogger` or
:class:`JsonlLogger`. Metric names are namespaced: ``train/loss``, ``val/loss``, ``mask/rate``,
``data/samples_per_s``.

:class:`MLflowLogger` uses ``MlflowClient`` with an explicit run id instead of MLflow's fluent global
run, so two loggers (or two runs in one process) never share state. It never lets the tracking server
crash training: when the server cannot be reached, at start or mid-run, it writes every call to
``<run_dir>/mlflow_buffer.jsonl``, warns once, retries every ``retry_interval_s`` seconds and replays the
buffer, in order, when the server is back (or at the next start with the same ``run_dir``, or with
``python -m tria.tracking replay <run_dir> --tracking-uri URI``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import posixpath
import re
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Sequence, Any, Protocol, TextIO, runtime_checkable

import yaml

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow/utils/validation.py): longer values are rejected, not truncated.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
BUFFER_NAME = "mlflow_buffer.jsonl"


@runtime_checkable
class MetricLogger(Protocol):
    """What the trainer needs from a logger."""

    def log(self, name: str, value: float, step: int) -> None:
        """Logs one scalar at a global step."""

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        """Logs several scalars at one global step."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Records the resolved run config (nested mapping or dataclass)."""

    def log_artifact(self, path: str | os.PathLike) -> None:
        """Attaches a file or folder to the run."""

    def close(self) -> None:
        """Flushes and ends the run; the logger is not used afterwards."""


def _scalar(value: Any) -> float:
    """Python float from a number, a 0-d numpy array or a one-element tensor."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metric value must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def _as_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise ValueError(f"config must be a mapping or a dataclass instance, got {type(config).__name__}")
    return dict(config)


def flatten_config(config: Mapping[str, Any] | Any, sep: str = ".") -> dict[str, str]:
    """Nested config -> ``{"model.dim": "512", ...}`` with string values cut to MLflow's limit.

    Lists and other non-scalar leaves become JSON; values longer than :data:`MAX_PARAM_VALUE_LENGTH`
    are truncated (the full config is attached as YAML anyway).
    """
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            node = dataclasses.asdict(node)
        if isinstance(node, Mapping) and node:
            for k, v in node.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
            return
        text = node if isinstance(node, str) else json.dumps(node, default=str)
        flat[metric_name(prefix)] = text[:MAX_PARAM_VALUE_LENGTH]

    walk("", _as_dict(config))
    return flat


def metric_name(name: str) -> str:
    """A name MLflow accepts: characters outside ``[/\\w.\\- :]`` become ``_``, no empty path parts."""
    clean = re.sub(r"[^/\w.\- :]", "_", str(name))[:MAX_KEY_LENGTH]
    if not clean or posixpath.normpath(clean) != clean or clean.startswith(("/", "..")) or clean == ".":
        clean = clean.replace("/", "_").strip(".") or "_"
    return clean


class NullLogger:
    """Logs nothing: for ranks other than 0 and for tests."""

    def log(self, name: str, value: float, step: int) -> None:
        pass

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike) -> None:
        pass

    def close(self) -> None:
        pass


class StdoutLogger:
    """One line per step on a text stream: ``step 100 | train/loss 2.3456 | mask/rate 0.5``.

    Args:
        stream: Where to write; default ``sys.stdout`` (looked up at each call, so pytest's capture works).
        precision: Significant digits of the values.
        keys: Only these metric names are printed (all when None); a console line stays readable while
            MLflow and the JSONL file get every metric.
        show_config: Print the whole config on ``log_config`` (else only that a config was logged).
    """

    def __init__(self, stream: TextIO | None = None, precision: int = 5, keys: Sequence[str] | None = None,
                 show_config: bool = True) -> None:
        self._stream, self._precision = stream, precision
        self._keys, self._show_config = (set(keys) if keys is not None else None), show_config

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def log(self, name: str, value: float, step: int) -> None:
        self.log_dict({name: value}, step)

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        parts = [f"{k} {_scalar(v):.{self._precision}g}" for k, v in metrics.items()
                 if self._keys is None or k in self._keys]
        if parts:
            self._write(" | ".join([f"step {step}", *parts]))

    def log_config(self, config: Mapping[str, Any]) -> None:
        if not self._show_config:
            return
        plain = json.loads(json.dumps(_as_dict(config), default=str))
        self._write("config:\n" + yaml.safe_dump(plain, sort_keys=False).rstrip())

    def log_artifact(self, path: str | os.PathLike) -> None:
        self._write(f"artifact: {os.fspath(path)}")

    def close(self) -> None:
        pass


class JsonlLogger:
    """Appends one JSON object per call to a file, flushed at once (survives a crash).

    Lines: ``{"time", "step", "metrics": {...}}``, ``{"time", "config": {...}}``, ``{"time", "artifact"}``.

    Args:
        path: The ``.jsonl`` file; parent folders are created.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({"time": time.time(), **record}, default=str) + "\n")
        self._file.flush()

    def log(self, name: str, value: float, step: int) -> None:
        self.log_dict({name: value}, step)

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        self._write({"step": int(step), "metrics": {k: _scalar(v) for k, v in metrics.items()}})

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._write({"config": _as_dict(config)})

    def log_artifact(self, path: str | os.PathLike) -> None:
        self._write({"artifact": os.path.abspath(path)})

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


# --------------------------------------------------------------------------------------------------------
# MLflow.


class _Unreachable(Exception):
    """The tracking server did not answer; the call is buffered."""


@contextlib.contextmanager
def _request_limits(max_retries: int, timeout_s: int) -> Iterator[None]:
    """Bounds MLflow's HTTP retries while one of our calls runs.

    MLflow reads these variables at each request; its defaults (7 retries, backoff factor 2, 120 s
    timeout) would block a training step for minutes when the server is down. The previous values are
    restored afterwards, so nothing leaks to other MLflow users of the process.
    """
    new = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
    }
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class MLflowLogger:
    """Logs to an MLflow tracking server through ``MlflowClient``; buffers locally when it is down.

    Which run it logs to:
        * ``run_id`` given: that run is resumed (set back to RUNNING); params already there are kept.
        * no ``run_id`` and a fluent MLflow run is active in this process (``mlflow.start_run()`` by the
          caller): with ``nested=False`` the logger logs into that run and leaves it open at ``close``;
          with ``nested=True`` it creates a child run (tag ``mlflow.parentRunId``).
        * otherwise a new run named ``run_name`` in ``experiment`` (created if missing).

    Args:
        tracking_uri: ``http://host:port`` of a tracking server, or any URI MLflow accepts (``file:``...).
        experiment: Experiment name.
        run_name: Name of a new run.
        run_id: Run to resume.
        run_dir: Local run folder: the config YAML and the offline buffer are written there.
        tags: Tags of a new run.
        nested: See above.
        retry_interval_s: Seconds between reconnection attempts while the server is unreachable.
        request_timeout_s: HTTP timeout of one request.
        max_retries: HTTP retries of one request before it counts as unreachable.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        run_dir: str | os.PathLike = ".",
        tags: Mapping[str, str] | None = None,
        nested: bool = False,
        retry_interval_s: float = 60.0,
        request_timeout_s: int = 10,
        max_retries: int = 1,
    ) -> None:
        from mlflow.tracking import MlflowClient

        if not experiment:
            raise ValueError("MLflowLogger needs an experiment name")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.run_id = run_id
        self.experiment_id: str | None = None  # known once the run is started or found
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.buffer_path = self.run_dir / BUFFER_NAME
        self._tags, self._nested = dict(tags or {}), nested
        self._retry_interval_s = retry_interval_s
        self._timeout_s, self._max_retries = request_timeout_s, max_retries
        try:  # local stores (sqlite:, file:) are opened here; a server URI is not contacted yet
            self._client = MlflowClient(tracking_uri=tracking_uri)
        except Exception as e:
            raise ValueError(f"MLflow cannot use tracking URI {tracking_uri!r}: {str(e)[:300]}") from e
        self._owns_run = True
        self._online = False
        self._warned = False
        self._last_attempt = -math.inf
        self._existing_params: dict[str, str] = {}
        self._closed = False
        self._reconnect(initial=True)

    # --- the MetricLogger interface -------------------------------------------------------------------

    def log(self, name: str, value: float, step: int) -> None:
        self.log_dict({name: value}, step)

    def log_dict(self, metrics: Mapping[str, float], step: int) -> None:
        record = {
            "kind": "metrics",
            "step": int(step),
            "timestamp": int(time.time() * 1000),
            "metrics": {metric_name(k): _scalar(v) for k, v in metrics.items()},
        }
        self._submit(record)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Flattened config as params (values cut to 6000 chars) and the full config as ``config.yaml``."""
        path = self.run_dir / "config.yaml"
        plain = json.loads(json.dumps(_as_dict(config), default=str))  # tuples, Paths -> YAML-safe types
        path.write_text(yaml.safe_dump(plain, sort_keys=False), encoding="utf-8")
        self._submit({"kind": "params", "params": flatten_config(config)})
        self._submit({"kind": "artifact", "path": str(path.resolve())})

    def log_artifact(self, path: str | os.PathLike) -> None:
        if not os.path.exists(path):
            raise ValueError(f"artifact {path} does not exist")
        self._submit({"kind": "artifact", "path": os.path.abspath(path)})

    def close(self, status: str = "FINISHED") -> None:
        """Flushes the buffer (one last attempt), then marks the run ``status`` (FINISHED, FAILED) if this
        logger owns it."""
        if self._closed:
            return
        self._closed = True
        if self._owns_run:
            self._submit({"kind": "end", "status": status}, force_retry=True)
        else:
            self._flush_if_due(force=True)
        if self.buffer_path.exists():
            logger.warning(
                "MLflow server %s still unreachable at close: %s keeps the unsent records; send "
                "them with: python -m tria.tracking replay %s --tracking-uri %s",
                self.tracking_uri,
                self.buffer_path,
                self.run_dir,
                self.tracking_uri,
            )

    # --- sending and buffering ------------------------------------------------------------------------

    def _submit(self, record: dict[str, Any], force_retry: bool = False) -> None:
        """Sends a record now, or appends it to the buffer file (keeping order) when offline."""
        if self._online and not self.buffer_path.exists():
            try:
                self._send(record)
                return
            except _Unreachable as e:
                self._go_offline(e)
        self._append(record)
        self._flush_if_due(force=force_retry)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Runs one client call: a lost server raises _Unreachable, a data error is warned and dropped."""
        try:
            with _request_limits(self._max_retries, self._timeout_s):
                return fn(*args, **kwargs)
        except Exception as e:  # MLflow wraps transport errors in MlflowException; sort them by probing
            if not self._server_reachable():
                raise _Unreachable(f"{type(e).__name__}: {str(e)[:300]}") from e
            logger.warning("MLflow rejected %s for run %s: %s", getattr(fn, "__name__", fn), self.run_id, e)
            return None

    def _server_reachable(self) -> bool:
        if not self.tracking_uri.startswith(("http://", "https://")):
            return True  # a local store has no server to lose: its errors are data errors
        try:
            with urllib.request.urlopen(self.tracking_uri.rstrip("/") + "/health", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def _send(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        kind = record["kind"]
        if kind == "metrics":
            metrics = [
                Metric(k, v, record["timestamp"], record["step"]) for k, v in record["metrics"].items()
            ]
            for i in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
                self._call(
                    self._client.log_batch, self.run_id, metrics=metrics[i : i + _MAX_METRICS_PER_BATCH]
                )
        elif kind == "params":
            self._send_params(record["params"])
        elif kind == "artifact":
            path = record["path"]
            if not os.path.exists(path):
                logger.warning("artifact %s vanished before it could be sent to MLflow", path)
            elif os.path.isdir(path):
                self._call(self._client.log_artifacts, self.run_id, path, os.path.basename(path))
            else:
                self._call(self._client.log_artifact, self.run_id, path)
        elif kind == "end":
            self._call(self._client.set_terminated, self.run_id, record["status"])

    def _send_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        # MLflow params are immutable: on a resumed run, send only new keys and say which ones changed.
        changed = sorted(
            k for k, v in params.items() if k in self._existing_params and self._existing_params[k] != v
        )
        if changed:
            logger.warning(
                "run %s already has different values for params %s; keeping the old ones",
                self.run_id,
                changed[:20],
            )
        new = [Param(k, v) for k, v in params.items() if k not in self._existing_params]
        for i in range(0, len(new), _MAX_PARAMS_PER_BATCH):
            self._call(self._client.log_batch, self.run_id, params=new[i : i + _MAX_PARAMS_PER_BATCH])
        self._existing_params.update({p.key: p.value for p in new})

    def _append(self, record: Mapping[str, Any]) -> None:
        new_file = not self.buffer_path.exists()
        with self.buffer_path.open("a", encoding="utf-8") as f:
            if new_file:  # first line: which run the records belong to, for a later replay
                f.write(
                    json.dumps(
                        {
                            "kind": "run",
                            "run_id": self.run_id,
                            "experiment": self.experiment,
                            "run_name": self.run_name,
                            "tracking_uri": self.tracking_uri,
                        }
                    )
                    + "\n"
                )
            f.write(json.dumps(record) + "\n")
            f.flush()

    def _go_offline(self, error: Exception) -> None:
        self._online = False
        self._last_attempt = time.monotonic()
        if not self._warned:
            self._warned = True
            logger.warning(
                "MLflow server %s is unreachable (%s). Training goes on; metrics are buffered in "
                "%s and sent when the server answers again (retry every %.0f s).",
                self.tracking_uri,
                error,
                self.buffer_path,
                self._retry_interval_s,
            )

    def _reconnect(self, initial: bool = False) -> bool:
        """Finds or creates the run, then flushes the buffer; True when all of that succeeded."""
        self._last_attempt = time.monotonic()
        try:
            self._start_run()
        except _Unreachable as e:
            self._go_offline(e)
            return False
        except ValueError as e:
            if initial:  # a bad run id or experiment is the caller's error: say so at once
                raise
            logger.warning("MLflow server %s answers but the run cannot be opened: %s", self.tracking_uri, e)
            return False
        self._online = True
        return self._flush_buffer()

    def _start_run(self) -> None:
        import mlflow

        client = self._client
        if self.run_id is not None:
            run = self._call(client.get_run, self.run_id)
            if run is None:
                raise ValueError(f"MLflow run {self.run_id} not found at {self.tracking_uri}")
            self.experiment_id = run.info.experiment_id
            self._existing_params = dict(run.data.params)
            if run.info.status != "RUNNING" and self._owns_run:
                self._call(client.update_run, self.run_id, "RUNNING")
            return
        active = mlflow.active_run()
        if active is not None and not self._nested:
            self.run_id, self._owns_run = active.info.run_id, False
            self.experiment_id = active.info.experiment_id
            run = self._call(client.get_run, self.run_id)
            self._existing_params = dict(run.data.params) if run is not None else {}
            return
        experiment_id = self._call(ensure_experiment, client, self.experiment)
        tags = dict(self._tags)
        if active is not None:
            tags["mlflow.parentRunId"] = active.info.run_id
        run = self._call(client.create_run, experiment_id, run_name=self.run_name, tags=tags)
        if run is None:
            raise ValueError(f"MLflow refused to create a run in experiment {self.experiment!r}")
        self.run_id, self.experiment_id = run.info.run_id, experiment_id

    @property
    def run_url(self) -> str | None:
        """The run's page in the MLflow web UI; None for local stores or while the run is not started."""
        if self.run_id is None or not self.tracking_uri.startswith(("http://", "https://")):
            return None
        base = self.tracking_uri.rstrip("/")
        if self.experiment_id is None:
            return f"{base}/#/runs/{self.run_id}"  # the UI redirects to the run's experiment
        return experiment_url(base, self.experiment_id, self.run_id)

    def _flush_if_due(self, force: bool = False) -> None:
        if self._online and not self.buffer_path.exists():
            return
        if force or time.monotonic() - self._last_attempt >= self._retry_interval_s:
            if self._online:
                self._flush_buffer()
            else:
                self._reconnect()

    def _flush_buffer(self) -> bool:
        """Sends the buffered records in order; keeps the unsent tail when the server drops again."""
        if not self.buffer_path.exists():
            return True
        lines = self.buffer_path.read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        records = [r for r in records if r.get("kind") != "run"]
        for i, record in enumerate(records):
            try:
                self._send(record)
            except _Unreachable as e:
                self._go_offline(e)
                self._rewrite_buffer(records[i:])
                return False
        self.buffer_path.unlink()
        logger.info(
            "MLflow server %s answers again: sent %d buffered records to run %s",
            self.tracking_uri,
            len(records),
            self.run_id,
        )
        return True

    def _rewrite_buffer(self, records: list[dict[str, Any]]) -> None:
        tmp = self.buffer_path.with_suffix(".tmp")
        head = {
            "kind": "run",
            "run_id": self.run_id,
            "experiment": self.experiment,
            "run_name": self.run_name,
            "tracking_uri": self.tracking_uri,
        }
        tmp.write_text("".join(json.dumps(r) + "\n" for r in [head, *records]), encoding="utf-8")
        os.replace(tmp, self.buffer_path)


# MLflow 3 opens an experiment in its GenAI view (traces) unless told it holds model training. The tag is
# read by MLflow's UI and API (`mlflow.experimentKind`, values in mlflow/server/js: "genai_development",
# "custom_model_development", ...). MLflow 3.17's UI also follows its global workflow switch
# (`?workflowType=machine_learning` in a link sets it): see `experiment_url`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created if missing, tagged as a model-training experiment."""
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    if experiment is None or experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment_id


def experiment_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """A UI link that opens the experiment (or run) in MLflow's model-training view."""
    base = tracking_uri.rstrip("/") + f"/#/experiments/{experiment_id}"
    return base + (f"/runs/{run_id}" if run_id else "") + "?workflowType=machine_learning"


def replay_buffer(run_dir: str | os.PathLike, tracking_uri: str | None = None) -> str | None:
    """Sends a run folder's offline buffer to MLflow (after a crash while the server was down).

    Args:
        run_dir: The folder that holds ``mlflow_buffer.jsonl``.
        tracking_uri: Server to send to; default the one recorded in the buffer.

    Returns:
        The run id the records went to, or None when the server is still unreachable.
    """
    path = Path(run_dir) / BUFFER_NAME
    if not path.exists():
        raise ValueError(f"no MLflow buffer at {path}")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records or records[0].get("kind") != "run":
        raise ValueError(f"{path} does not start with a run header line")
    head = records[0]
    mlf = MLflowLogger(
        tracking_uri or head["tracking_uri"],
        head["experiment"],
        head.get("run_name"),
        head.get("run_id"),
        run_dir,
        retry_interval_s=0.0,
    )
    if mlf.buffer_path.exists():
        return None
    if not any(r.get("kind") == "end" for r in records):
        # The process that wrote the buffer died before close(): mark the run as failed, not running.
        mlf._call(mlf._client.set_terminated, mlf.run_id, "FAILED")
    return mlf.run_id


def main(argv: list[str] | None = None) -> int:
    """``python -m tria.tracking replay RUN_DIR [--tracking-uri URI]``."""
    parser = argparse.ArgumentParser(prog="python -m tria.tracking")
    sub = parser.add_subparsers(dest="cmd", required=True)
    replay = sub.add_parser("replay", help="send a run folder's offline MLflow buffer")
    replay.add_argument("run_dir")
    replay.add_argument("--tracking-uri")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    run_id = replay_buffer(args.run_dir, args.tracking_uri)
    print(run_id if run_id else "server unreachable; buffer kept")
    return 0 if run_id else 1


if __name__ == "__main__":
    sys.exit(main())
