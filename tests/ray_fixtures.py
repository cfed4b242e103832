"""Helpers of the Ray cluster tests: a pipeline config on a fixture corpus, and the samples of its shards."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml


def pipeline_yaml(root: Path, audio: Path, mix: bool = False, per_shard: int = 4, batch: int = 1,
                  ray: dict | None = None, include: tuple[str, ...] = ("loop_*",), name: str = "cluster-test") -> Path:
    """``root/pipeline.yaml`` over the loops (and the mix) of ``audio``: tiny random codec, release features."""
    sources = [{"name": "local_folder", "location": str(audio), "include": list(include), "tier": "isolated",
                "licence": "test"}]
    if mix:
        sources.append({"name": "local_folder", "location": str(audio), "include": ["song_*"], "role": "mix",
                        "tier": "separated", "licence": "test", "split": "train"})
    cfg = {
        "name": name,
        "sources": sources,
        "filter": {"region_s": 7.0, "loudness_cutoff_db": -50.0},  # random-init Demucs output is quiet
        "prompts": {"n_variants": 2, "augment": {"preset": "release"}, "features": {"preset": "release"}},
        "codec": {"weights": "random", "size": "tiny"},
        "separate": {"weights": "random"},
        "shard": {"samples_per_shard": per_shard},
        "ray": {"prompt_batch_size": batch, "tokenize_batch_size": batch, **(ray or {})},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    return root / "pipeline.yaml"


def read_shards(shard_dir: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """key -> (tokens, feats) over the complete field sets under ``shard_dir`` (each token shard zipped with
    the prompt shard of its group, beside it), and every key read from the token shards (repeats kept)."""
    samples, keys = {}, []
    for path in sorted(shard_dir.rglob("tokens-*/shard-*.tar")):
        [prompts] = sorted(path.parent.parent.glob(f"prompts-*/{path.name}"))
        tokens, feats = _members(path), _members(prompts)
        assert [n for n in tokens if n.endswith(".json")] == [n for n in feats if n.endswith(".json")], path
        for name in tokens:
            if name.endswith(".json"):
                key = json.loads(tokens[name])["key"]
                keys.append(key)
                samples[key] = (np.load(io.BytesIO(tokens[f"{name[:-5]}.tokens.npy"])),
                                np.load(io.BytesIO(feats[f"{name[:-5]}.feats.npy"])))
    return samples, keys


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@contextlib.contextmanager
def local_cluster(head_cpus: int, dashboard: bool = False) -> Iterator[tuple[Any, str, Callable[..., Any]]]:
    """A multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: one raylet and its workers per
    node) with token auth, free ports and its own temp folder. Yields ``(cluster, job_url, add_node)``;
    ``add_node(**node_args)`` starts one more node (``num_cpus``, ``num_gpus``, ``resources`` ...).

    Free ports and a private temp folder, because Ray's defaults (a fixed agent port, /tmp/ray) are shared
    with every other Ray on the machine: a node then talked to another cluster's runtime-env agent (seen
    here: RuntimeEnvSetupError naming another checkout's venv). The venv's bin goes first on PATH: a
    submitted job's ``python`` is found on the head's PATH.
    """
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes

    def ports() -> dict:
        return dict(temp_dir=temp, dashboard_agent_listen_port=free_port(), runtime_env_agent_port=free_port(),
                    metrics_agent_port=free_port(), metrics_export_port=free_port())

    saved = {k: os.environ.get(k) for k in ("PATH", "RAY_AUTH_MODE")}
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    os.environ["RAY_AUTH_MODE"] = "token"
    _ensure_ray_token()
    _refresh_ray_auth()  # this process read the mode at import; nodes and clients must agree
    dashboard_port = [0]

    def head() -> dict:
        dashboard_port[0] = free_port()
        args = dict(num_cpus=head_cpus, gcs_server_port=free_port(), ray_client_server_port=free_port(),
                    include_dashboard=dashboard, **ports())
        return args | (dict(dashboard_host="127.0.0.1", dashboard_port=dashboard_port[0]) if dashboard else {})

    # Cluster.add_node writes the head's address to Ray's default temp folder whatever temp_dir says, and
    # fails where that folder does not exist yet (a fresh machine).
    from ray._common.utils import get_default_ray_temp_dir

    from ray._private.utils import get_ray_address_file, write_ray_address

    os.makedirs(get_default_ray_temp_dir(), exist_ok=True)
    # ... and so points the Ray that the user started there (`make demo`'s head) at this test cluster
    # (and Cluster.shutdown deletes the file): their next `ray job submit` then ran on a cluster that no
    # longer existed (seen). It is put back after the start and after the shutdown.
    before = shared_ray_address()

    def restore_shared() -> None:
        shared = Path(get_ray_address_file(None))
        if before is None:
            shared.unlink(missing_ok=True)
        else:
            shared.write_text(before)

    c = Cluster()
    try:
        _retry_start(lambda: c.add_node(**head()))  # new ports each try: a failed head may still hold its own
        restore_shared()  # (a failed start: the finally below puts it back)
        # A submitted job's driver finds its cluster through <temp_dir>/ray_current_cluster; without it Ray
        # falls back to any Ray it sees on the machine (seen: a job of this cluster joined the demo's head).
        write_ray_address(c.head_node.gcs_address, temp)
        yield c, f"http://127.0.0.1:{dashboard_port[0]}", lambda **node: _retry_start(lambda: c.add_node(**node, **ports()))
    finally:
        c.shutdown()
        restore_shared()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_auth()


def shared_ray_address() -> str | None:
    """The text of Ray's machine-wide "last cluster started" file (``<default temp dir>/ray_current_cluster``),
    which a Ray that the user started themselves (`make demo`'s head) relies on; None when there is none."""
    from ray._private.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    return path.read_text() if path.exists() else None


def _ensure_ray_token() -> None:
    """Make the token file that ``ray start`` and ``ray.init`` make when token auth finds none
    (~/.ray/auth_token), unless a token is already set. On a fresh machine (CI) there is none, and a Ray
    client in token mode without one aborts the whole process (seen here). The same file for every
    cluster: Ray's C++ side keeps the first token a process loaded, so clusters with different tokens in
    one process refuse it (InvalidAuthToken, seen with a fresh env token per cluster)."""
    from ray._private.authentication.authentication_token_setup import (_get_default_token_path,
                                                                         generate_and_save_token)

    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not _get_default_token_path().exists():
        generate_and_save_token()


def free_port() -> int:
    """A TCP port free on every interface. Ray binds its agents on the node's IP, not on 127.0.0.1, so a
    loopback-only probe (tests/net.py) can hand out a port that another Ray already holds there: a node
    of this cluster then reached another cluster's runtime-env agent (seen here, twice, under load)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _retry_start(start: Callable[[], Any], tries: int = 3) -> Any:
    """Ray gives a new raylet a fixed 30 s to register (ray/_private/node.py); on a machine loaded by other
    users it sometimes needs more. Try again, up to ``tries`` times, on that error only."""
    for attempt in range(tries):
        try:
            return start()
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == tries - 1:
                raise
            print(f"[local_cluster] a Ray node did not register within 30 s; starting it again ({e})", flush=True)


def _refresh_ray_auth() -> None:
    from ray._private.authentication.authentication_token_setup import Config

    Config.initialize("")


REPO = Path(__file__).resolve().parents[1]


def submit_pipeline(url: str, cfg: Path, root: Path, **popen) -> "subprocess.Popen":
    """``orchestration/submit_pipeline.sh`` (``ray job submit``) of ``cfg`` to the cluster at ``url``."""
    import subprocess

    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(["bash", str(REPO / "orchestration" / "submit_pipeline.sh"), "--address", url, str(cfg),
                             f"root={root}"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def ray_actors(gcs: str, cls: str = "Tokenizer") -> list:
    """The cluster's actors (alive or dead) whose class name contains ``cls``, from Ray's state API."""
    from ray.util.state import list_actors

    return [a for a in list_actors(address=gcs, detail=True, limit=1000) if cls in a.class_name]


def check_catalogue(root: Path) -> set[str]:
    """Every excerpt in exactly one complete shard, catalogue and shard files agreeing; returns the keys."""
    from collections import Counter

    from pipelines.catalogue import Catalogue

    samples, keys = read_shards(root / "data" / "shards")
    assert len(keys) == len(set(keys)), f"duplicated: {[k for k, n in Counter(keys).items() if n > 1]}"
    with Catalogue(root / "data" / "catalogue.duckdb", read_only=True) as cat:
        excerpts = {r[0] for r in cat.execute("SELECT excerpt_id FROM excerpts").rows}
        linked = {kind: [r[0] for r in cat.execute(
            "SELECT excerpt_id FROM shard_excerpts se JOIN shards s USING (shard_id) WHERE s.status = 'ok' "
            "AND s.kind = ?", [kind]).rows] for kind in ("tokens", "prompts")}
        runs = cat.execute("SELECT status FROM pipeline_runs").rows
    assert sorted(linked["tokens"]) == sorted(linked["prompts"]) == sorted(excerpts) == sorted(samples), \
        "nothing lost, nothing twice"
    assert runs and all(r == ("done",) for r in runs), runs
    assert not list((root / "data" / "shards").rglob("*.tmp"))
    return set(samples)
