"""The trainer under faults: kill -9 mid-step and mid-checkpoint, corrupt checkpoints, MLflow gone.

Kills are real SIGKILLs of `python -m tria.train` subprocesses (no finally, no atexit). The MLflow
tests use a real `orchestration/mlflow_server.sh` server (session fixture) and a closed port.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from net import free_port
import torch

from faults.fault_tools import kill_tree, wait_for
from shard_fixtures import make_corpus, train_yaml
from tria.checkpoint import load_checkpoint
from tria.train import main

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_corpus")
    make_corpus(root, {("train", "isolated"): 16, ("val", "isolated"): 4})
    return root


def logged(run_dir: Path, metric: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) of every metrics.jsonl line with ``metric``, in file order (repeats kept)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # the line a kill cut in half
            continue
        if metric in r.get("metrics", {}):
            out.append((r["step"], r["metrics"][metric]))
    return out


def start_train(cfg: Path, *args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tria.train", str(cfg), *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def temp_checkpoints(ckpt_dir: Path) -> list[Path]:
    return list(ckpt_dir.glob(".*.pt.*.tmp")) if ckpt_dir.exists() else []


def test_killed_mid_step_then_mid_checkpoint_write_resumes_and_finishes(corpus, tmp_path, tally):
    """1) kill -9 between checkpoints: latest.pt is the last save and --resume continues from it;
    2) kill -9 while latest.pt is being rewritten (a bigger model and a save every step make the write
    window wide; the kill lands when the temp file exists): the previous checkpoint still loads;
    3) --resume runs to the end, replayed steps give the same losses, and no temp file is left.
    Two DataLoader workers that persist across epochs (4 steps per epoch here) are killed with the trainer."""
    n_iters = 30
    # 256 channels x 4 layers: a ~100 MB checkpoint with its optimiser state, slow enough to be caught.
    cfg = train_yaml(corpus, "killed", num_iters=n_iters, log_every=1, val_every=0, sample_every=0,
                     ckpt_every=10, model={"size": "tiny", "overrides": {"n_channels": 256, "n_layers": 4}},
                     data={"num_workers": 2, "record_keys": True})
    run_dir, log = corpus / "runs" / "killed", tmp_path / "train.log"
    ckpt = run_dir / "checkpoints" / "latest.pt"

    # 1) kill -9 mid-step, between the checkpoints of steps 10 and 20
    proc = start_train(cfg, log=log)
    try:
        reached = wait_for(lambda: max((s for s, _ in logged(run_dir)), default=0) >= 13, 300, 0.01, proc)
        kill_tree(proc)
    finally:
        kill_tree(proc)
    assert reached, log.read_text()[-3000:]
    tally.fault("kill -9 of the trainer mid-step")
    last_logged = max(s for s, _ in logged(run_dir))
    assert load_checkpoint(ckpt)["train_state"]["step"] == 10 < last_logged < 20

    # 2) resume, saving every step, and kill -9 while a checkpoint is being written
    proc = start_train(cfg, "--resume", "ckpt_every=1", log=log)
    try:
        caught = wait_for(lambda: bool(temp_checkpoints(ckpt.parent)) and
                          max((s for s, _ in logged(run_dir)), default=0) > last_logged, 300, 0.002, proc)
        kill_tree(proc)
    finally:
        kill_tree(proc)
    assert caught, log.read_text()[-3000:]
    tally.fault("kill -9 of the trainer while it writes a checkpoint")
    assert temp_checkpoints(ckpt.parent), "the kill landed mid-write: its temp file is still there"
    step_before = load_checkpoint(ckpt)["train_state"]["step"]  # whole, loadable: the previous save
    assert 10 <= step_before < n_iters

    # 3) resume to the end
    out = subprocess.run([sys.executable, "-m", "tria.train", str(cfg), "--resume"], cwd=REPO, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"at step {step_before} " in out.stdout, out.stdout[-2000:]
    assert load_checkpoint(ckpt)["train_state"]["step"] == n_iters
    assert not temp_checkpoints(ckpt.parent), "temp files of interrupted saves are cleaned up on resume"
    history = logged(run_dir)
    lost, _ = tally.samples({str(s) for s in range(1, n_iters + 1)}, sorted({str(s) for s, _ in history}))
    assert lost == 0
    first: dict[int, float] = {}
    for step, loss in history:  # a step trained twice (after a resume) saw the same batch and masks
        assert abs(first.setdefault(step, loss) - loss) <= 1e-5, (step, first[step], loss)
    keys: dict[int, list[str]] = {}
    for line in (run_dir / "keys" / "rank0.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:  # the line a kill cut in half
            continue
        assert keys.setdefault(r["step"], r["keys"]) == r["keys"], f"step {r['step']} replayed with other samples"
    assert sorted(keys) == list(range(1, n_iters + 1))
    assert sorted(sum((keys[s] for s in range(1, 5)), [])) == sorted(sum((keys[s] for s in range(5, 9)), []))


def _closed_port() -> int:
    return free_port()  # the probe socket is closed again: nothing listens there


def test_mlflow_down_at_start(corpus, caplog, capsys, tally):
    """tracking_uri points at a closed port: training finishes, warns once, and every metric is in the
    run folder's buffer, in order, ready for `python -m tria.tracking replay`."""
    url = f"http://127.0.0.1:{_closed_port()}"
    cfg = train_yaml(corpus, "mlflow_down", num_iters=5, log_every=1, val_every=0, sample_every=0, ckpt_every=5)
    with caplog.at_level(logging.WARNING, logger="tria.tracking"):
        assert main([str(cfg), f"mlflow.tracking_uri={url}"]) == 0
    tally.fault("MLflow server unreachable at start")
    warnings = [r.getMessage() for r in caplog.records if r.name == "tria.tracking"]
    assert any("unreachable" in w and "Training goes on" in w for w in warnings), warnings
    run_dir = corpus / "runs" / "mlflow_down"
    records = [json.loads(line) for line in (run_dir / "mlflow_buffer.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "run" and records[0]["tracking_uri"] == url
    steps = [r["step"] for r in records if r["kind"] == "metrics" and "train/loss" in r["metrics"]]
    lost, duplicated = tally.samples({str(s) for s in range(1, 6)}, [str(s) for s in steps])
    assert (lost, duplicated) == (0, 0) and steps == [1, 2, 3, 4, 5]
    assert any(r["kind"] == "params" for r in records) and records[-1]["kind"] == "end"
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["train_state"]["step"] == 5


def test_mlflow_killed_mid_run(corpus, mlflow_server, tally):
    """A real server, SIGKILLed after a few steps: training goes on; the steps the server got plus the
    buffered ones, replayed into its store afterwards, are every step exactly once."""
    from mlflow.tracking import MlflowClient

    from tria.tracking import replay_buffer

    n_iters = 40
    cfg = train_yaml(corpus, "mlflow_mid", num_iters=n_iters, log_every=1, val_every=0, sample_every=0,
                     ckpt_every=n_iters)
    run_dir = corpus / "runs" / "mlflow_mid"
    killed_at: list[int] = []

    def killer() -> None:
        if wait_for(lambda: max((s for s, _ in logged(run_dir)), default=0) >= 3, 300, 0.005):
            mlflow_server.kill()
            killed_at.append(max(s for s, _ in logged(run_dir)))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert main([str(cfg), f"mlflow.tracking_uri={mlflow_server.url}", "mlflow.experiment=faults"]) == 0
    finally:
        thread.join(timeout=60)
    assert killed_at and killed_at[0] < n_iters, "the server was killed while training ran"
    tally.fault("MLflow server killed mid-run")
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["train_state"]["step"] == n_iters
    buffered = [json.loads(line) for line in (run_dir / "mlflow_buffer.jsonl").read_text().splitlines()]
    run_id = buffered[0]["run_id"]
    store = MlflowClient(mlflow_server.store_uri)
    sent = sorted(m.step for m in store.get_metric_history(run_id, "train/loss"))
    assert sent and sent == list(range(1, len(sent) + 1)), "the server got the first steps, in order"

    assert replay_buffer(run_dir, tracking_uri=mlflow_server.store_uri) == run_id
    steps = [m.step for m in store.get_metric_history(run_id, "train/loss")]
    lost, duplicated = tally.samples({str(s) for s in range(1, n_iters + 1)}, [str(s) for s in steps])
    assert (lost, duplicated) == (0, 0), sorted(steps)
    assert not (run_dir / "mlflow_buffer.jsonl").exists()


@pytest.fixture(scope="module")
def good_checkpoint(corpus) -> tuple[Path, bytes]:
    cfg = train_yaml(corpus, "to_corrupt", num_iters=2, val_every=0, sample_every=0, ckpt_every=2)
    assert main([str(cfg)]) == 0
    ckpt = corpus / "runs" / "to_corrupt" / "checkpoints" / "latest.pt"
    return cfg, ckpt.read_bytes()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _corruptions(good: bytes, marker: Path) -> dict[str, tuple[bytes, str]]:
    import io
    import zipfile

    def saved(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    with zipfile.ZipFile(io.BytesIO(good)) as zf:  # bits flipped inside the model's tensor data
        info = max(zf.infolist(), key=lambda i: i.file_size)
    flipped = bytearray(good)
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100
    flipped[at:at + 32] = bytes(b ^ 0xFF for b in flipped[at:at + 32])
    return {  # name -> (bytes, what the error must say)
        "zero_length": (b"", "cannot read checkpoint"),
        "truncated": (good[: len(good) // 2], "cannot read checkpoint"),
        "random_bytes": (np.random.default_rng(0).bytes(4096), "cannot read checkpoint"),
        # Pickle opcodes that make torch's weights-only unpickler fail with IndexError / KeyError / struct.error:
        **{f"bad_opcodes_{i}": (data, "cannot read checkpoint") for i, data in enumerate(
            (b"\x80\x02t.", b"\x80\x02\x85.", b"\x80\x02h\x05.", b"\x80\x02}q\x00(X"))},
        "bits_flipped_in_weights": (bytes(flipped), "fails its CRC-32 check"),  # torch.load alone: wrong weights
        "plain_pickle": (pickle.dumps({"format": "tria-checkpoint-v1"}), "cannot read checkpoint"),
        "not_a_dict": (saved([1, 2, 3]), "not a checkpoint dict"),
        "wrong_format": (saved({"format": "something-else"}), "has format 'something-else'"),
        "missing_keys": (saved({"format": "tria-checkpoint-v1", "model": {}}), "lacks keys"),
        "runs_code_when_unpickled": (saved({"format": "tria-checkpoint-v1", "x": _RunsCode(marker)}),
                                     "refusing to unpickle"),
    }


def test_corrupt_checkpoint_gives_a_clear_error_on_resume(good_checkpoint, tmp_path, capsys, tally):
    cfg, good = good_checkpoint
    ckpt = Path(cfg).parent / "runs" / "to_corrupt" / "checkpoints" / "latest.pt"
    marker = tmp_path / "code_ran"
    cases = _corruptions(good, marker)
    for name, (data, says) in cases.items():
        ckpt.write_bytes(data)
        capsys.readouterr()
        assert main([str(cfg), "--resume"]) == 2, name  # returns: no traceback, whatever torch raised
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # (torch may warn first, e.g. about the pickle protocol)
        assert last.startswith("checkpoint error: ") and "Traceback" not in err, (name, err)
        assert str(ckpt) in last and says in last, (name, last)
    tally.fault("corrupt checkpoints on --resume", n=len(cases))
    assert not marker.exists(), "unpickling the checkpoint ran code"
    ckpt.write_bytes(good)
    assert main([str(cfg), "--resume", "num_iters=3"]) == 0  # the good one still resumes
