"""torchrun --nproc_per_node 2 (gloo, CPU) against a real MLflow server, checked through the MLflow client."""

from __future__ import annotations

import json
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


TRAIN_SH = REPO / "orchestration" / "train.sh"


def _steps(run_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "keys" / f"rank{rank}.jsonl").read_text().splitlines()]


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["metrics"]["train/loss"] for r in records if "train/loss" in r.get("metrics", {})}


@pytest.mark.slow
def test_two_node_rendezvous_trains_the_global_batches_of_one_node(tmp_path, mlflow_server):
    """Two torchrun agents on 127.0.0.1 (c10d rendezvous, gloo, 1 process each) through train.sh train the
    same global batch at every step as one process with the same global batch size, and get its losses."""
    from mlflow.tracking import MlflowClient

    make_corpus(tmp_path, {("train", "isolated"): 16, ("val", "isolated"): 4})  # 4 steps per epoch of batch 4
    cfg = str(train_yaml(tmp_path, "nodes", num_iters=6, val_every=0, sample_every=0, ckpt_every=6,
                         data={"record_keys": True}))
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "OMP_NUM_THREADS": "1",
           "PYTHON": sys.executable}
    one = subprocess.run(["bash", str(TRAIN_SH), cfg, "--nproc", "1", "name=one", "data.num_workers=0"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    assert "MLflow: off" in one.stdout  # the reference run logs to metrics.jsonl only

    master = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(["bash", str(TRAIN_SH), cfg, "--nproc", "1", "--nnodes", "2", "--node-rank", str(r),
                               "--master", master, "--run-id", "two-nodes", "name=two", "data.num_workers=1",
                               f"mlflow.tracking_uri={mlflow_server}", "mlflow.experiment=nodes-test"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=600) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(nodes, outs, strict=True):
        assert p.returncode == 0, out[-3000:] + err[-3000:]
    assert "--rdzv_backend c10d" in outs[0][1] and "is_host=true" in outs[0][1] and "is_host=false" in outs[1][1]
    assert sum(": TRIA tiny" in out and "x2;" in out for out, _ in outs) == 1, "one global rank 0, world size 2"

    ref, runs = _steps(tmp_path / "runs" / "one", 0), tmp_path / "runs" / "two"
    by_rank = [_steps(runs, 0), _steps(runs, 1)]
    assert [s["step"] for s in ref] == [s["step"] for s in by_rank[0]] == [s["step"] for s in by_rank[1]] == [
        1, 2, 3, 4, 5, 6]
    for s, r0, r1 in zip(ref, *by_rank, strict=True):
        assert len(r0["keys"]) == len(r1["keys"]) == 2
        assert r0["keys"] + r1["keys"] == s["keys"], "rank r trains the r-th half of the same global batch"
        assert (r0["epoch"], r0["position"]) == (r1["epoch"], r1["position"]) == (s["epoch"], s["position"])
    assert {s["epoch"] for s in ref} == {0, 1}
    a, b = _losses(tmp_path / "runs" / "one"), _losses(runs)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])

    urls = [line for out, _ in outs for line in out.splitlines() if line.startswith("MLflow run: ")]
    assert len(urls) == 1 and urls[0].startswith(f"MLflow run: {mlflow_server}/#/experiments/"), urls
    run_id = urls[0].split("?")[0].rsplit("/", 1)[1]
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.run_name == "two" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
    assert urls[0] == (f"MLflow run: {mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
                       "?workflowType=machine_learning")


def test_train_sh_help_and_bad_arguments(tmp_path):
    help_ = subprocess.run(["bash", str(TRAIN_SH), "--help"], capture_output=True, text=True, timeout=30)
    assert help_.returncode == 0
    for word in ("CONFIG", "--nproc", "--nnodes", "--node-rank", "--master", "key=value", "MLflow"):
        assert word in help_.stdout
    cfg = str(train_yaml(tmp_path, "args"))
    for args, message in [([cfg, "--nnodes", "2"], "needs --master"),
                          ([cfg, "--nnodes", "2", "--master", "h:1"], "needs --node-rank"),
                          ([cfg, "--nnodes", "2", "--node-rank", "2", "--master", "h:1"], "0..1"),
                          ([cfg, "--nnodes", "2", "--node-rank", "0", "--master", "h"], "HOST:PORT"),
                          ([str(tmp_path / "missing.yaml")], "not found"), ([cfg, "--nproc", "0"], ">= 1")]:
        r = subprocess.run(["bash", str(TRAIN_SH), *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    dry = subprocess.run(["bash", str(TRAIN_SH), cfg, "--nproc", "3", "--dry-run", "num_iters=2"],
                         capture_output=True, text=True, timeout=30, env={**os.environ, "MLFLOW_TRACKING_URI": "http://m:1"})
    assert dry.returncode == 0
    assert "--standalone" in dry.stderr and "--nproc_per_node 3" in dry.stderr
    assert dry.stderr.rstrip().endswith(f"-m tria.train {cfg} num_iters=2 mlflow.tracking_uri=http://m:1")
