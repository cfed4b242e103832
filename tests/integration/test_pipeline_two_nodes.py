"""A real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a second node, each
with its own raylet and workers): the codec actors are pinned to the second node by a custom resource, the
pipeline is submitted with ``orchestration/submit_pipeline.sh`` (``ray job submit``), and the second node
is removed mid-run. A replacement node with the same resource joins (what an autoscaler does); the job
finishes through Ray's actor restarts and task retries, with nothing lost and nothing duplicated."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from net import free_port
from pipeline_fixtures import make_drums
from pipelines.catalogue import Catalogue
from ray_fixtures import pipeline_yaml, read_shards

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "orchestration" / "submit_pipeline.sh"
pytestmark = [pytest.mark.integration, pytest.mark.slow]
CODEC = {"tokenize": {"resources": {"codec": 1}}}  # the codec actors need the second node's resource


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    venv_bin = str(Path(sys.executable).parent)
    temp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    with pytest.MonkeyPatch.context() as mp:
        # The job's `python` is found on the head's PATH; clients and nodes agree on token auth.
        mp.setenv("PATH", f"{venv_bin}:{os.environ['PATH']}")
        mp.setenv("RAY_AUTH_MODE", "token")
        ports = dict(port=free_port(), dashboard_port=free_port(), dashboard_agent_listen_port=free_port(),
                     ray_client_server_port=free_port())
        c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=2, include_dashboard=True,
                                                              dashboard_host="127.0.0.1", temp_dir=temp, **ports))
        try:
            node = c.add_node(num_cpus=1, resources={"codec": 1}, dashboard_agent_listen_port=free_port())
            c.wait_for_nodes()
            yield c, f"http://127.0.0.1:{ports['dashboard_port']}", node
        finally:
            c.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    audio = tmp_path_factory.mktemp("audio")
    make_drums(audio, n_loops=4, seconds=14.0, bad=False)  # 8 excerpts
    return audio


def _submit(url: str, cfg: Path, root: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(["bash", str(SUBMIT), "--address", url, str(cfg), f"root={root}"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _codec_actors(gcs: str) -> list:
    from ray.util.state import list_actors

    return [a for a in list_actors(address=gcs, detail=True, limit=1000) if "Tokenizer" in a.class_name]


def _check_catalogue(root: Path) -> set[str]:
    """Every excerpt in exactly one complete shard, catalogue and shard files agreeing; returns the keys."""
    samples, keys = read_shards(root / "data" / "shards")
    assert len(keys) == len(set(keys)), f"duplicated: {[k for k, n in Counter(keys).items() if n > 1]}"
    with Catalogue(root / "data" / "catalogue.duckdb", read_only=True) as cat:
        excerpts = {r[0] for r in cat.execute("SELECT excerpt_id FROM excerpts").rows}
        linked = cat.execute("SELECT excerpt_id FROM shard_excerpts se JOIN shards s USING (shard_id) "
                             "WHERE s.status = 'ok'").rows
        runs = cat.execute("SELECT status FROM pipeline_runs").rows
    assert sorted(r[0] for r in linked) == sorted(excerpts) == sorted(samples), "nothing lost, nothing twice"
    assert runs and all(r == ("finished",) for r in runs), runs
    assert not list((root / "data" / "shards").rglob("*.tmp"))
    return set(samples)


@pytest.fixture(scope="module")
def clean_run(cluster, corpus, tmp_path_factory):
    c, url, node = cluster
    root = tmp_path_factory.mktemp("clean")
    proc = _submit(url, pipeline_yaml(root, corpus, ray=CODEC), root)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-5000:]
    return root, out, _codec_actors(c.gcs_address)


def test_codec_actors_run_on_the_second_node_and_the_script_prints_the_summary(cluster, clean_run):
    c, _, node = cluster
    root, out, actors = clean_run
    assert actors, "no codec actor found through the state API"
    for a in actors:
        assert a.node_id == node.node_id != c.head_node.node_id, "codec actors run on the second node"
        assert a.required_resources.get("codec") == 1.0, a.required_resources
    assert "[tokenize] actor pool 1..1 actors, each asks for CPU 1, codec 1" in out  # 1 codec unit: 1 actor
    assert "pipeline cluster-test: done" in out
    assert "==> catalogue summary" in out and "shards (ok)" in out and "excerpts" in out
    assert len(_check_catalogue(root)) == 8


def test_remove_the_codec_node_mid_run(cluster, corpus, clean_run, tmp_path):
    c, url, node = cluster
    root = tmp_path / "removed"
    shard_dir = root / "data" / "shards"
    proc = _submit(url, pipeline_yaml(root, corpus, per_shard=2, ray=CODEC), root)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not list(shard_dir.rglob("shard-*.tar")):
            time.sleep(0.2)
        n_before = len(list(shard_dir.rglob("shard-*.tar")))
        assert proc.poll() is None and n_before, "the run must be in its shard stage, not finished"
        c.remove_node(node, allow_graceful=False)  # the codec node dies: its actor and batches with it
        replacement = c.add_node(num_cpus=1, resources={"codec": 1}, dashboard_agent_listen_port=free_port())
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-5000:]
    keys = _check_catalogue(root)
    assert keys == _check_catalogue(clean_run[0]), "the same samples as the run that lost no node"
    assert len(list(shard_dir.rglob("shard-*.tar"))) > n_before, "the rest was written after the node went"
    actors = [a for a in _codec_actors(c.gcs_address) if a.job_id != clean_run[2][0].job_id]
    nodes = {a.node_id for a in actors}
    assert replacement.node_id in nodes or any(a.num_restarts for a in actors), \
        "the codec actor was restarted on the replacement node"
