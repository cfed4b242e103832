"""torchrun --nproc_per_node 2 (gloo, CPU) against a real MLflow server, checked through the MLflow client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from net import free_port

from shard_fixtures import make_corpus, train_yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "PYTHON": sys.executable}
    script = REPO / "orchestration" / "mlflow_server.sh"
    subprocess.run(["bash", str(script), "start", "--port", str(port), "--dir", str(d)], check=True, env=env,
                   timeout=180)
    yield f"http://127.0.0.1:{port}"
    subprocess.run(["bash", str(script), "stop", "--port", str(port), "--dir", str(d)], env=env, timeout=60)


def test_torchrun_two_processes_logs_to_mlflow(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    make_corpus(tmp_path, {("train", "isolated"): 16, ("val", "isolated"): 4})
    cfg = train_yaml(tmp_path, "ddp", num_iters=4, val_every=2, sample_every=4, n_samples=2, ckpt_every=4)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tria.train",
         str(cfg), f"mlflow.tracking_uri={mlflow_server}", "mlflow.experiment=ddp-test"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "x2;" in proc.stdout, "both ranks should form one DDP group"

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("ddp-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "only rank 0 logs"
    run = runs[0]
    assert run.data.params["model.size"] == "tiny" and run.data.params["data.batch_size"] == "4"
    assert run.data.params["features.sample_rate"] == "16000"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert any(k.startswith("train/loss_cb") for k in run.data.metrics)
    assert any(k.startswith("val/acc_cb") for k in run.data.metrics) and "val/loss" in run.data.metrics
    assert "data/examples_per_s" in run.data.metrics and "train/lr" in run.data.metrics
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "shards.json", "latest.pt"} <= names, names
    samples = [a for a in names if a.endswith(".wav")]
    assert len(samples) == 2, names

    from pipelines.catalogue import Catalogue
    with Catalogue(tmp_path / "catalogue.duckdb", read_only=True) as cat:
        rows = cat.execute("SELECT status FROM training_runs WHERE mlflow_run_id = ?", [run.info.run_id]).rows
        n_shards = cat.execute("SELECT count(*) FROM training_run_shards WHERE run_id = ?", [run.info.run_id]).rows
    assert rows == (("done",),) and n_shards[0][0] == 8  # 4 shard groups: a token and a prompt shard each
