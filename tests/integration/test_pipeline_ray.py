"""The pipeline through a real local Ray head and `ray job submit`: rows, shards, rejects, and
kill -9 of the job driver mid-run followed by a resubmit that finishes with nothing lost or duplicated."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from net import free_port

from pipeline_fixtures import BAD_FILES, make_drums, make_mix
from pipelines.catalogue import Catalogue
from ray_fixtures import pipeline_yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_head():
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), "RAY_PORT": str(free_port()),
           "RAY_DASHBOARD_PORT": str(free_port()), "RAY_CLIENT_PORT": str(free_port()), "RAY_NUM_CPUS": "2",
           "RAY_AUTH_MODE": "token"}
    script = str(REPO / "orchestration" / "ray_local.sh")
    out = subprocess.run(["bash", script, "start"], env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip().splitlines()[-1]
    yield url, env
    subprocess.run(["bash", script, "stop"], env=env, cwd=REPO, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    audio = tmp_path_factory.mktemp("audio")
    make_drums(audio, n_loops=6, seconds=14.0)
    make_mix(audio, seconds=10.0)
    return audio


def _config(root: Path, audio: Path, mix: bool = True, per_shard: int = 3, batch: int = 4) -> Path:
    return pipeline_yaml(root, audio, mix=mix, per_shard=per_shard, batch=batch, include=("loop_*", "bad_*"), name="it")


def _submit(url: str, env: dict, cfg: Path, root: Path, wait: bool = True) -> subprocess.CompletedProcess:
    cmd = [RAY, "job", "submit", "--address", url, "--working-dir", str(REPO)] + ([] if wait else ["--no-wait"])
    cmd += ["--", "python", "-m", "pipelines.run", str(cfg), f"root={root}"]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _read_shards(root: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, dict]], list[str]]:
    """key -> (tokens, feats, meta) over every token shard zipped with its group's prompt shard, and the
    list of all keys (with repeats)."""
    samples, keys = {}, []
    for path in sorted((root / "data" / "shards").rglob("tokens-*/shard-*.tar")):
        prompt_tars = sorted(path.parent.parent.glob(f"prompts-*/{path.name}"))
        assert len(prompt_tars) == 1, f"one prompt shard per group, got {prompt_tars}"
        tokens, prompts = _tar_members(path), _tar_members(prompt_tars[0])
        token_keys = [n[: -len(".json")] for n in tokens if n.endswith(".json")]
        assert token_keys == [n[: -len(".json")] for n in prompts if n.endswith(".json")], "aligned field sets"
        for key in token_keys:
            keys.append(key)
            samples[key] = (np.load(io.BytesIO(tokens[f"{key}.tokens.npy"])),
                            np.load(io.BytesIO(prompts[f"{key}.feats.npy"])), json.loads(tokens[f"{key}.json"]))
    return samples, keys


@pytest.fixture(scope="module")
def clean_run(ray_head, corpus, tmp_path_factory):
    url, env = ray_head
    root = tmp_path_factory.mktemp("clean")
    proc = _submit(url, env, _config(root, corpus), root)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return root, proc.stdout


def test_rows_shards_and_rejects(clean_run):
    root, log = clean_run
    assert "pipeline it: done" in log and "shards (this config)" in log
    # CPU-only head of 2 CPUs: the GPU stages' actors ask for CPUs; the codec pool stops at 1 actor so that
    # a CPU stays free for the prompt and shard-writing tasks (plan_shard_stages); Demucs may take both
    assert "[tokenize] the codec pool stops at 1 actor(s) so that 1 of the cluster's 2 CPUs stays free" in log
    assert "[tokenize] actor pool 1..1 actors, each asks for CPU 1; prompts on CPU tasks" in log
    assert "[separate] actor pool 1..2 actors, each asks for CPU 1" in log
    samples, keys = _read_shards(root)
    assert len(keys) == len(set(keys)) > 0, "sample keys are unique across shards"
    for key, (tokens, feats, meta) in samples.items():
        assert tokens.dtype == np.int16 and tokens.shape == (9, 516) and 0 <= tokens.min() and tokens.max() < 1024
        assert feats.dtype == np.float16 and feats.shape == (2, 2, 516)
        assert meta["key"] == key and meta["codec_id"] == "dac-random-tiny-s0" and meta["n_frames"] <= 516
    with Catalogue(root / "data" / "catalogue.duckdb", read_only=True) as cat:
        n_excerpts = cat.execute("SELECT count(*) FROM excerpts").rows[0][0]
        n_shard_samples = cat.execute("SELECT sum(n_samples) FROM shards WHERE status = 'ok' AND kind = 'tokens'"
                                      ).rows[0][0]
        assert n_shard_samples == cat.execute("SELECT sum(n_samples) FROM shards WHERE kind = 'prompts'").rows[0][0]
        linked = cat.execute("SELECT count(DISTINCT excerpt_id) FROM shard_excerpts").rows[0][0]
        tiers = dict(cat.execute("SELECT tier, count(*) FROM stems WHERE role = 'drums' GROUP BY tier").rows)
        reasons = cat.execute("SELECT coalesce(s.track, r.item), r.reason FROM rejects r "
                              "LEFT JOIN stems s ON s.stem_id = r.item").rows
        sep = cat.execute("SELECT count(*) FROM stems WHERE tier = 'separated' AND role = 'drums' "
                          "AND parent_stem_id <> ''").rows[0][0]
    assert n_excerpts == n_shard_samples == linked == len(samples)
    # 6 loops + the 3 planted files that open (silent, 8 kHz, NaN) are stems; the filter rejects those 3.
    assert tiers == {"isolated": 6 + 3, "separated": 1} and sep == 1, "the mix was separated by Demucs"
    assert any(m["tier"] == "separated" for _, _, m in samples.values())
    found = {name: reason for what, reason in reasons for name in BAD_FILES if Path(name).stem in what}
    assert found == BAD_FILES, found


def test_second_submit_does_no_work(ray_head, corpus, clean_run):
    url, env = ray_head
    root, _ = clean_run
    before = sorted(p.stat().st_mtime_ns for p in (root / "data" / "shards").rglob("*.tar"))
    proc = _submit(url, env, _config(root, corpus), root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nothing to do" in proc.stdout and "written this run   : 0 shards" in proc.stdout
    assert "encoded (codec)    : 0 excerpts" in proc.stdout and "featurised         : 0 excerpts" in proc.stdout
    assert sorted(p.stat().st_mtime_ns for p in (root / "data" / "shards").rglob("*.tar")) == before


def test_kill_driver_mid_run_then_resubmit(ray_head, corpus, clean_run, tmp_path):
    url, env = ray_head
    root = tmp_path / "killed"
    # drums only, one excerpt per block and small shards: results trickle out, so the kill lands mid-run
    cfg = _config(root, corpus, mix=False, per_shard=2, batch=1)
    proc = _submit(url, env, cfg, root, wait=False)
    assert proc.returncode == 0, proc.stderr
    shard_dir = root / "data" / "shards"
    deadline = time.time() + 600
    while time.time() < deadline and not list(shard_dir.rglob("shard-*.tar")):
        time.sleep(0.2)
    assert list(shard_dir.rglob("shard-*.tar")), "the run never reached the shard stage"
    pids = subprocess.run(["pgrep", "-f", f"pipelines.run {cfg} root={root}"], capture_output=True, text=True).stdout.split()
    assert pids, "driver process not found"
    for pid in pids:
        os.kill(int(pid), 9)  # kill -9 the job driver mid-run
    for pid in pids:
        for _ in range(300):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
    with Catalogue(root / "data" / "catalogue.duckdb", read_only=True) as cat:
        status = cat.execute("SELECT status FROM pipeline_runs").rows
    assert status == (("running",),), "the run finished before it was killed: the test proved nothing"
    partial, _ = _read_shards(root)

    again = _submit(url, env, cfg, root)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    resumed, keys = _read_shards(root)
    clean, _ = _read_shards(clean_run[0])
    clean = {k: v for k, v in clean.items() if v[2]["tier"] == "isolated"}  # this run has no mix
    assert len(keys) == len(set(keys)), "no sample is duplicated"
    assert set(resumed) == set(clean), "same sample keys as the uninterrupted run"
    assert partial and set(partial) < set(resumed), "shards written before the kill are kept, the rest added"
    for key in clean:
        assert np.array_equal(resumed[key][0], clean[key][0]) and np.array_equal(resumed[key][1], clean[key][1]), key
    assert not list(shard_dir.rglob("*.tmp")), "no partial shard is left behind"
    counts = Counter(m["key"] for _, _, m in resumed.values())
    assert max(counts.values()) == 1
