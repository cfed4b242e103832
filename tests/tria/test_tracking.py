"""Tests of the loggers, against a real MLflow server started by orchestration/mlflow_server.sh."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from net import free_port
import yaml
from mlflow.tracking import MlflowClient

from tria.tracking import (
    BUFFER_NAME,
    MAX_PARAM_VALUE_LENGTH,
    JsonlLogger,
    MetricLogger,
    MLflowLogger,
    NullLogger,
    StdoutLogger,
    flatten_config,
    metric_name,
    replay_buffer,
)

SCRIPT = Path(__file__).resolve().parents[2] / "orchestration" / "mlflow_server.sh"
CONFIG = {"model": {"dim": 64, "layers": [1, 2]}, "data": {"seed": 3}, "note": "x" * 7000}


def script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=150)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real `mlflow server` (sqlite in tmp) for the module: it costs ~10 s to start."""
    folder = tmp_path_factory.mktemp("mlflow")
    args = ("--port", str(free_port()), "--dir", str(folder))
    started = script("start", *args)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip().splitlines()[-1], args
    finally:
        script("stop", *args)


def metric_history(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


class TCPProxy:
    """127.0.0.1 port forwarder that can be cut and restored: a server that goes away mid-run."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream, self.port = upstream_port, free_port()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen()
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self._socks += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return

    def stop(self) -> None:
        for s in [self._listener, *self._socks]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._socks.clear()


@pytest.mark.integration
class TestScript:
    def test_start_is_idempotent_and_status_reports(self, server):
        url, args = server
        again = script("start", *args)
        assert again.returncode == 0 and again.stdout.strip() == url
        assert "already running" in again.stderr
        status = script("status", *args)
        assert status.returncode == 0 and status.stdout.startswith("running") and url in status.stdout

    def test_stopped_dir_reports_stopped(self, tmp_path):
        status = script("status", "--port", str(free_port()), "--dir", str(tmp_path))
        assert status.returncode == 3 and status.stdout.strip() == "stopped"
        assert script("start", "--port", "x").returncode == 2


@pytest.mark.integration
class TestMLflowLogger:
    def test_params_metrics_artifacts_reach_the_server(self, server, tmp_path):
        url, _ = server
        lg = MLflowLogger(url, "tria-test", run_name="basic", run_dir=tmp_path, tags={"curriculum": "coarse"})
        assert isinstance(lg, MetricLogger)
        lg.log_config(CONFIG)
        lg.log("train/loss", 1.5, step=1)
        lg.log_dict({"train/loss": 1.0, "mask/rate": 0.5}, step=2)
        extra = tmp_path / "sample.txt"
        extra.write_text("hello")
        lg.log_artifact(extra)
        lg.close()

        client = MlflowClient(url)
        run = client.get_run(lg.run_id)
        assert run.info.run_name == "basic" and run.info.status == "FINISHED"
        assert run.data.tags["curriculum"] == "coarse"
        params = run.data.params
        assert (
            params["model.dim"] == "64" and params["model.layers"] == "[1, 2]" and params["data.seed"] == "3"
        )
        assert params["note"] == "x" * MAX_PARAM_VALUE_LENGTH
        assert metric_history(client, lg.run_id, "train/loss") == [(1, 1.5), (2, 1.0)]
        assert metric_history(client, lg.run_id, "mask/rate") == [(2, 0.5)]
        assert {a.path for a in client.list_artifacts(lg.run_id)} == {"config.yaml", "sample.txt"}
        local = client.download_artifacts(lg.run_id, "config.yaml", str(tmp_path / "dl"))
        assert yaml.safe_load(Path(local).read_text()) == CONFIG
        assert not (tmp_path / BUFFER_NAME).exists()

    def test_resume_by_run_id(self, server, tmp_path, caplog):
        url, _ = server
        first = MLflowLogger(url, "tria-test", run_name="resumed", run_dir=tmp_path)
        first.log_config({"lr": 0.1, "steps": 10})
        first.log("train/loss", 3.0, step=1)
        first.close()
        client = MlflowClient(url)
        assert client.get_run(first.run_id).info.status == "FINISHED"

        second = MLflowLogger(url, "tria-test", run_id=first.run_id, run_dir=tmp_path)
        assert client.get_run(first.run_id).info.status == "RUNNING"
        with caplog.at_level(logging.WARNING, logger="tria.tracking"):
            second.log_config({"lr": 0.1, "steps": 20, "resumed_from": 1})  # params are immutable in MLflow
        second.log("train/loss", 2.0, step=2)
        second.close()
        run = client.get_run(first.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"lr": "0.1", "steps": "10", "resumed_from": "1"}
        assert any("steps" in r.getMessage() and "different values" in r.getMessage() for r in caplog.records)
        assert metric_history(client, first.run_id, "train/loss") == [(1, 3.0), (2, 2.0)]
        with pytest.raises(ValueError, match="not found"):
            MLflowLogger(url, "tria-test", run_id="0" * 32, run_dir=tmp_path)

    def test_inside_an_active_fluent_run(self, server, tmp_path, monkeypatch):
        import mlflow

        url, _ = server
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("tria-test") or client.get_experiment(
            client.create_experiment("tria-test")
        )
        with mlflow.start_run(experiment_id=exp.experiment_id) as active:
            reuse = MLflowLogger(url, "tria-test", run_dir=tmp_path / "a")
            reuse.log("train/loss", 1.0, step=1)
            reuse.close()
            nested = MLflowLogger(url, "tria-test", run_name="child", run_dir=tmp_path / "b", nested=True)
            nested.close()
            assert reuse.run_id == active.info.run_id
            assert client.get_run(active.info.run_id).info.status == "RUNNING"  # not ours to end
        assert metric_history(client, active.info.run_id, "train/loss") == [(1, 1.0)]
        child = client.get_run(nested.run_id)
        assert nested.run_id != active.info.run_id and child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == active.info.run_id
        assert mlflow.active_run() is None

    @pytest.mark.faults
    def test_server_down_at_start_buffers_then_replays(self, server, tmp_path, caplog):
        url, _ = server
        dead = f"http://127.0.0.1:{free_port()}"
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="tria.tracking"):
            lg = MLflowLogger(
                dead, "tria-offline", run_name="offline", run_dir=tmp_path, retry_interval_s=3600
            )
            lg.log_config({"lr": 0.5})
            for step in range(3):
                lg.log("train/loss", 1.0 / (step + 1), step=step)
            lg.close()
        # MLflow's default HTTP retries (7, exponential backoff) would block each call for minutes.
        assert time.monotonic() - start < 30
        unreachable = [
            r for r in caplog.records if "unreachable" in r.getMessage() and dead in r.getMessage()
        ]
        assert len(unreachable) == 2  # one when it went offline, one at close naming the buffer
        assert str(tmp_path / BUFFER_NAME) in unreachable[0].getMessage()
        records = [json.loads(line) for line in (tmp_path / BUFFER_NAME).read_text().splitlines()]
        assert records[0]["kind"] == "run" and records[0]["run_id"] is None
        assert [r["kind"] for r in records[1:]] == [
            "params",
            "artifact",
            "metrics",
            "metrics",
            "metrics",
            "end",
        ]
        assert records[3]["metrics"] == {"train/loss": 1.0} and records[3]["step"] == 0

        run_id = replay_buffer(tmp_path, tracking_uri=url)
        assert run_id is not None and not (tmp_path / BUFFER_NAME).exists()
        client = MlflowClient(url)
        run = client.get_run(run_id)
        assert run.info.run_name == "offline" and run.info.status == "FINISHED"
        assert run.data.params == {"lr": "0.5"}
        assert metric_history(client, run_id, "train/loss") == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]

    @pytest.mark.faults
    def test_server_lost_mid_run_is_buffered_and_flushed(self, server, tmp_path, caplog):
        url, _ = server
        proxy = TCPProxy(int(url.rsplit(":", 1)[1]))
        proxy.start()
        lg = MLflowLogger(
            f"http://127.0.0.1:{proxy.port}",
            "tria-test",
            run_name="flaky",
            run_dir=tmp_path,
            retry_interval_s=0.0,
        )
        lg.log("train/loss", 1.0, step=1)
        proxy.stop()
        with caplog.at_level(logging.WARNING, logger="tria.tracking"):
            lg.log("train/loss", 0.9, step=2)  # must not raise
            lg.log("train/loss", 0.8, step=3)
        assert (tmp_path / BUFFER_NAME).exists()
        assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
        proxy.start()
        lg.log("train/loss", 0.7, step=4)  # retry_interval_s=0: reconnects and flushes in order first
        assert not (tmp_path / BUFFER_NAME).exists()
        lg.close()
        proxy.stop()
        client = MlflowClient(url)
        assert metric_history(client, lg.run_id, "train/loss") == [(1, 1.0), (2, 0.9), (3, 0.8), (4, 0.7)]
        assert client.get_run(lg.run_id).info.status == "FINISHED"


class TestSimpleLoggers:
    def test_stdout_logger_lines(self, capsys):
        lg = StdoutLogger()
        lg.log("train/loss", 2.345678, step=10)
        lg.log_dict({"val/loss": 1.5, "mask/rate": 0.25}, step=11)
        lg.log_config({"model": {"dim": 8}})
        lg.log_artifact("ckpt.pt")
        lg.close()
        out = capsys.readouterr().out.splitlines()
        assert out[0] == "step 10 | train/loss 2.3457"
        assert out[1] == "step 11 | val/loss 1.5 | mask/rate 0.25"
        assert out[2:5] == ["config:", "model:", "  dim: 8"] and out[5] == "artifact: ckpt.pt"

    def test_jsonl_logger_records(self, tmp_path):
        import torch

        lg = JsonlLogger(tmp_path / "run" / "metrics.jsonl")
        lg.log("train/loss", torch.tensor(0.5), step=1)
        lg.log_dict({"a": 1, "b": 2.5}, step=2)
        lg.log_config({"x": (1, 2)})
        lg.close()
        rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert rows[0]["step"] == 1 and rows[0]["metrics"] == {"train/loss": 0.5}
        assert rows[1]["metrics"] == {"a": 1.0, "b": 2.5} and rows[2]["config"] == {"x": [1, 2]}
        assert all(isinstance(r["time"], float) for r in rows)

    def test_null_logger_and_protocol(self):
        for lg in (NullLogger(), StdoutLogger(stream=io.StringIO())):
            assert isinstance(lg, MetricLogger)
            lg.log("a", 1.0, 0)
            lg.close()

    def test_unusable_tracking_uri_is_a_value_error(self, tmp_path):
        with pytest.raises(ValueError, match="tracking URI"):
            MLflowLogger("nosuchscheme://x", "e", run_dir=tmp_path)

    def test_bad_values_raise(self):
        with pytest.raises(ValueError, match="real number"):
            StdoutLogger(stream=io.StringIO()).log("a", "high", 0)
        with pytest.raises(ValueError, match="mapping"):
            flatten_config([1, 2])


def test_flatten_and_names():
    @dataclass
    class Opt:
        lr: float = 0.1
        betas: tuple = (0.9, 0.99)

    flat = flatten_config({"optim": Opt(), "name": "run", "empty": {}, "none": None})
    assert flat == {
        "optim.lr": "0.1",
        "optim.betas": "[0.9, 0.99]",
        "name": "run",
        "empty": "{}",
        "none": "null",
    }
    assert metric_name("loss@cb[3]") == "loss_cb_3_" and metric_name("train/loss") == "train/loss"
    assert metric_name("/a//b") == "_a__b" and len(metric_name("k" * 400)) == 250
