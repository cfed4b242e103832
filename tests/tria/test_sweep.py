"""Sweeps: variant resolution, and a real 2-variant sweep against a real MLflow server, killed and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from net import free_port
from shard_fixtures import make_corpus, train_yaml
from tria.config import ConfigError
from tria.sweep import (
    load_sweep,
    main,
    read_eval_summary,
    report_markdown,
    resolve_variants,
    sweep_hash,
)
from tria.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "orchestration" / "mlflow_server.sh"


def write_sweep(folder: Path, train_cfg: Path, **extra) -> Path:
    spec = {"name": "pair", "experiment": "sweep-test", "base": str(train_cfg), "out_dir": str(folder / "sweeps"),
            "overrides": ["log_every=1"],
            "variants": {"a": {"overrides": ["curriculum.n_coarse=4"]},
                         "b": {"overrides": ["curriculum.n_coarse=4", "curriculum.fine_weight_start=0.0"],
                               "description": "fine codebooks ramp in"}},
            **extra}
    path = folder / "pair.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class TestResolve:
    def test_order_of_overrides_and_steps(self, tmp_path):
        cfg = train_yaml(tmp_path)
        sweep = load_sweep(write_sweep(tmp_path, cfg))
        a, b = resolve_variants(sweep, ["optim.lr=0.01"], steps=5, tracking_uri="http://x")
        assert (a.name, a.index, b.index) == ("a", 0, 1)
        assert a.config["num_iters"] == b.config["num_iters"] == 5
        assert a.config["optim"]["lr"] == 0.01 and a.config["log_every"] == 1
        assert a.config["curriculum"]["fine_weight_start"] == 1.0 and b.config["curriculum"]["fine_weight_start"] == 0.0
        assert a.config["mlflow"] == {"tracking_uri": "http://x", "experiment": "sweep-test", "run_name": "a",
                                      "run_id": ""}

    def test_hash_follows_the_configs_not_the_tracking(self, tmp_path):
        sweep = load_sweep(write_sweep(tmp_path, train_yaml(tmp_path)))
        h = sweep_hash(resolve_variants(sweep, steps=5, tracking_uri="http://x"))
        assert h == sweep_hash(resolve_variants(sweep, steps=5, tracking_uri="http://y"))
        assert h != sweep_hash(resolve_variants(sweep, steps=6, tracking_uri="http://x"))

    def test_variant_files_merge_by_name_through_include(self, tmp_path):
        base = write_sweep(tmp_path, train_yaml(tmp_path))
        (tmp_path / "small.yaml").write_text(yaml.safe_dump(
            {"include": "pair.yaml", "name": "small", "variants": {"b": {"overrides": ["curriculum.n_coarse=2"]}}}))
        sweep = load_sweep(tmp_path / "small.yaml")
        assert list(sweep.variants) == ["a", "b"]
        _, b = resolve_variants(sweep)
        assert b.config["curriculum"]["n_coarse"] == 2 and b.config["name"] == "b"
        assert sweep.variant("b").description == "fine codebooks ramp in"
        assert base.exists()

    def test_a_bad_variant_fails_before_any_training(self, tmp_path):
        cfg = train_yaml(tmp_path)
        sweep = load_sweep(write_sweep(tmp_path, cfg, variants={"a": {}, "b": {"overrides": ["model.sise=tiny"]}}))
        with pytest.raises(ConfigError, match="variant 'b'.*sise"):
            resolve_variants(sweep)
        no_base = load_sweep(write_sweep(tmp_path, cfg, base="", variants={"a": {}}))
        with pytest.raises(ConfigError, match="names no config"):
            resolve_variants(no_base)
        with pytest.raises(ConfigError, match="unknown config key"):
            load_sweep(write_sweep(tmp_path, cfg, variants={"a": {"overide": []}})).variant("a")


def test_report_tables_show_codebooks_and_eval_cis(tmp_path):
    (tmp_path / "summary.csv").write_text("onset_f1,onset_f1_ci_low,onset_f1_ci_high,fd,rhythm_corr,note\n"
                                          "0.5,0.25,0.75,3.5,,x\n")
    ev = read_eval_summary(tmp_path / "summary.csv")
    assert ev == {"eval/onset_f1": 0.5, "eval/onset_f1_ci_low": 0.25, "eval/onset_f1_ci_high": 0.75, "eval/fd": 3.5}
    nan = float("nan")
    row = {"variant": "v", "run_id": "r", "status": "FINISHED", "n_coarse": 4, "steps": 6, "val_loss": 6.0,
           "wall_s": 10.0, "train_s": 5.0, "tokens_per_s": 1234.0, "eval_outputs": 4.0,
           **{f"loss_cb{k}": float(k) for k in range(9)}, **{f"acc_cb{k}": k / 10 for k in range(9)}}
    for m in ("onset_f1", "rhythm_corr", "timbre_cosine", "fd"):
        row.update({m: nan, f"{m}_ci_low": nan, f"{m}_ci_high": nan})
    row.update(onset_f1=0.5, onset_f1_ci_low=0.25, onset_f1_ci_high=0.75)

    class Parent:
        class info:
            run_id, run_name = "p", "p"

        class data:
            tags = {"tria.sweep": "s"}

    md = report_markdown(Parent, [row])
    # coarse = mean of cb0-3 losses (1.5), fine = mean of cb4-8 (6.0)
    assert "| v | FINISHED | 6 | 6.000 | 1.500 | 6.000 | 0.150 | 0.600 | 10 | 5 | 1234 |" in md
    assert "| v | 0.500 [0.250, 0.750] |  |  |  | 4 |" in md


# ----------------------------------------------------------------------------------------------
# The real thing: MLflow server + trainer subprocesses


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    args = ["--port", str(free_port()), "--dir", str(folder)]
    env = {**os.environ, "PYTHON": sys.executable}
    started = subprocess.run([str(SERVER), "start", *args], env=env, capture_output=True, text=True, timeout=150)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(SERVER), "stop", *args], env=env, capture_output=True, timeout=60)


def _sweep_cmd(sweep: Path, uri: str) -> list[str]:
    return [sys.executable, "-m", "tria.sweep", str(sweep), "--tracking-uri", uri, "--steps", "6"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_killed_after_first_child_resumes_only_the_second(tmp_path, mlflow_server, capsys):
    make_corpus(tmp_path)
    sweep = write_sweep(tmp_path, train_yaml(tmp_path, ckpt_every=2))
    # First attempt: killed (whole process group, trainer included) once variant b has trained a step.
    proc = subprocess.Popen(_sweep_cmd(sweep, mlflow_server), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    first = []
    deadline = time.time() + 240
    for line in proc.stdout:
        first.append(line)
        if line.startswith("  [b] step 3 "):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        assert time.time() < deadline, "".join(first)
    proc.wait(timeout=30)
    first_text = "".join(first)
    assert "a: starting" in first_text and "b: starting" in first_text, first_text

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("sweep-test")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    parents = client.search_runs([exp.experiment_id], "tags.`tria.sweep_role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "RUNNING"
    kids = {r.data.tags["tria.variant"]: r for r in
            client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")}
    assert kids["a"].info.status == "FINISHED" and kids["b"].info.status == "RUNNING"
    a_history = len(client.get_metric_history(kids["a"].info.run_id, "train/loss"))

    # Second attempt: a is skipped, b resumes from its own checkpoint in the same child run.
    second = subprocess.run(_sweep_cmd(sweep, mlflow_server), cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=300)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "resuming parent run " + parents[0].info.run_id in out
    assert "a: finished earlier" in out and "a: starting" not in out and "[a] " not in out
    assert f"b: resuming (RUNNING) run {kids['b'].info.run_id}" in out
    assert "[b] [train] resumed from" in out

    parent = client.get_run(parents[0].info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.variants"] == "a,b"
    kids2 = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["tria.variant"] for r in kids2) == ["a", "b"]
    for run in kids2:
        assert run.info.status == "FINISHED"
        assert run.data.params["num_iters"] == "6" and run.data.params["curriculum.n_coarse"] == "4"
        assert {"val/loss_cb0", "val/acc_cb0", "train/loss"} <= set(run.data.metrics)
        assert max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == 6
    assert client.get_run(kids["b"].info.run_id).data.params["curriculum.fine_weight_start"] == "0.0"
    assert len(client.get_metric_history(kids["a"].info.run_id, "train/loss")) == a_history  # a untouched
    report = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert report == {"report/report.md", "report/report.png", "report/report.json"}
    md = Path(client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path / "dl")))
    text = md.read_text()
    assert "| a | FINISHED | 6 |" in text and "| b | FINISHED | 6 |" in text and "cb8" in text

    # On demand: the same report from the run id alone.
    assert main(["--report", parent.info.run_id, "--tracking-uri", mlflow_server, "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.png").stat().st_size > 10_000
    assert "| a | FINISHED | 6 |" in capsys.readouterr().out

    # A third run finds everything done and trains nothing.
    third = subprocess.run(_sweep_cmd(sweep, mlflow_server), cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=120)
    assert third.returncode == 0 and "starting" not in third.stdout and "resuming (" not in third.stdout


@pytest.mark.parametrize("name", ["curriculum", "curriculum_demo", "paper_ablation", "paper_ablation_demo"])
def test_shipped_sweeps_resolve(name):
    sweep = load_sweep(REPO / "conf" / "sweep" / f"{name}.yaml")
    variants = resolve_variants(sweep, steps=None)
    by = {v.name: v.config for v in variants}
    if name.startswith("curriculum"):
        assert list(by) == ["uniform", "coarse_first", "fine_late", "separated_all"]
        assert by["separated_all"]["curriculum"]["tier_codebooks"]["separated"] == 9
        assert by["uniform"]["curriculum"]["tier_codebooks"]["separated"] == 4
        n = by["uniform"]["num_iters"]
        # the schedule points keep their place in the run: ramp over the first third, switch at half
        assert by["coarse_first"]["curriculum"]["end_step"] == n // 3
        assert by["fine_late"]["curriculum"]["start_step"] == by["fine_late"]["curriculum"]["end_step"] == n // 2
    else:
        assert {k: (c["features"]["n_bands"], c["features"]["adaptive"]) for k, c in by.items()} == {
            "bands1": (1, True), "bands2": (2, True), "bands3": (3, True), "bands4": (4, True),
            "bands2_fixed": (2, False)}
        assert len({json_id(c) for c in by.values()}) == 5  # five feature configs: five shard sets
    assert all(c["val_every_codebook"] for c in by.values())
    if name.endswith("_demo"):
        assert all(c["model"]["size"] == "tiny" and c["num_iters"] == 300 for c in by.values())
        assert all(c["codec"]["weights"] == "demo-drums" for c in by.values())  # the demo's own tokens
        assert sweep.eval.set == "conf/eval/demo.yaml" and sweep.pipeline.startswith("conf/pipeline/demo")


def json_id(train_config: dict) -> str:
    from tria.config import from_dict
    from tria.features import RhythmFeatureConfig

    return from_dict(RhythmFeatureConfig, train_config["features"]).config_id
