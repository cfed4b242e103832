"""The pipeline's GPU stages on a real local Ray that declares 2 GPUs (this machine has none), then the same
config on a CPU-only Ray: what the actors asked for, seen through Ray's state API, and the same shards."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_fixtures import make_drums, make_mix
from pipelines.run import load_pipeline_config, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    audio = tmp_path_factory.mktemp("audio")
    make_drums(audio, n_loops=3, seconds=14.0, bad=False)
    make_mix(audio, seconds=6.0)
    return audio


def _config(root: Path, audio: Path) -> Path:
    cfg = {
        "name": "res",
        "sources": [
            {"name": "local_folder", "location": str(audio), "include": ["loop_*"], "tier": "isolated",
             "licence": "test"},
            {"name": "local_folder", "location": str(audio), "include": ["song_*"], "role": "mix",
             "tier": "separated", "licence": "test", "split": "train"}],
        "filter": {"region_s": 7.0, "loudness_cutoff_db": -50.0},
        "prompts": {"n_variants": 2, "augment": {"preset": "release"}, "features": {"preset": "release"}},
        "codec": {"weights": "random", "size": "tiny"},
        "separate": {"weights": "random"},
        "shard": {"samples_per_shard": 4},
        "ray": {"prompt_batch_size": 1, "tokenize_batch_size": 1},  # one excerpt per block: work to share
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    return root / "pipeline.yaml"


def read_shards(shard_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for path in sorted(shard_dir.rglob("*.tar")):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in members:
            if name.endswith(".json"):
                key = json.loads(members[name])["key"]
                assert key not in out, f"{key} is in two shards"
                out[key] = (np.load(io.BytesIO(members[f"{name[:-5]}.tokens.npy"])),
                            np.load(io.BytesIO(members[f"{name[:-5]}.feats.npy"])))
    return out


def _run_on(ray_kwargs: dict, root: Path, audio: Path) -> tuple[str, list, dict]:
    """The pipeline on a fresh local Ray; its log, the actors Ray ran (state API) and the shards."""
    import ray
    from ray.util.state import list_actors

    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # the plan lines, and the actors' logs that Ray forwards
        ray.init(address="local", include_dashboard=True, log_to_driver=True, **ray_kwargs)
        try:
            run(load_pipeline_config(str(_config(root, audio)), [f"root={root}"]))
            actors = list_actors(address=ray.get_runtime_context().gcs_address, detail=True, limit=1000)
        finally:
            ray.shutdown()
    print(log.getvalue()[-5000:])
    return log.getvalue(), actors, read_shards(root / "data" / "shards")


def _actors(actors: list, cls: str) -> list:
    return [a for a in actors if f"MapBatches({cls})" in a.class_name]


@pytest.fixture(scope="module")
def gpu_run(corpus, tmp_path_factory):
    return _run_on({"num_cpus": 4, "num_gpus": 2}, tmp_path_factory.mktemp("gpu"), corpus)


def test_gpu_cluster_actors_ask_for_gpus_and_pools_grow_to_the_gpus(gpu_run):
    log, actors, shards = gpu_run
    tokenizers, separators = _actors(actors, "PromptsTokenizer"), _actors(actors, "Separator")
    assert tokenizers and separators, sorted({a.class_name for a in actors})
    for a in tokenizers + separators:
        assert a.required_resources.get("GPU") == 1.0, (a.class_name, a.required_resources)
    # the pools may grow to the 2 declared GPUs, and no further
    assert "[tokenize] actor pool 1..2 actors, each asks for GPU 1; prompts on the codec actors" in log
    assert "[separate] actor pool 1..2 actors, each asks for GPU 1" in log
    assert 1 <= len(tokenizers) <= 2 and len(separators) <= 2
    assert not [a for a in actors if "MapBatches(prompts_batch)" in a.class_name]
    assert "[tokenize] Ray gave this actor GPU" in log and "torch sees no CUDA device" in log, "CPU fallback said"
    assert len(shards) >= 6, "3 loops of 14 s and the separated mix were tokenized"


def test_cpu_only_cluster_same_config_runs_on_cpus_with_the_same_shards(gpu_run, corpus, tmp_path):
    log, actors, shards = _run_on({"num_cpus": 2, "num_gpus": 0}, tmp_path, corpus)
    tokenizers, separators = _actors(actors, "Tokenizer"), _actors(actors, "Separator")
    assert tokenizers and separators
    for a in tokenizers + separators:
        assert "GPU" not in a.required_resources and a.required_resources.get("CPU") == 1.0, a.required_resources
    assert "[tokenize] actor pool 1..2 actors, each asks for CPU 1; prompts on CPU tasks" in log
    _, _, gpu_shards = gpu_run
    assert set(shards) == set(gpu_shards), "the same excerpts"
    for key, (tokens, feats) in shards.items():  # prompts on the codec actors (CPU fallback) == CPU tasks
        assert np.array_equal(tokens, gpu_shards[key][0]) and np.array_equal(feats, gpu_shards[key][1]), key
