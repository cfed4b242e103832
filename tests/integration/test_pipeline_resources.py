"""The pipeline's GPU stages on a real local Ray that declares 2 GPUs (this machine has none), then the same
config on a CPU-only Ray: what the actors asked for, seen through Ray's state API, and the same shards."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from pipeline_fixtures import make_drums, make_mix
from pipelines.run import load_pipeline_config, run
from ray_fixtures import pipeline_yaml, read_shards

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    audio = tmp_path_factory.mktemp("audio")
    make_drums(audio, n_loops=3, seconds=14.0, bad=False)
    make_mix(audio, seconds=6.0)
    return audio


def _run_on(ray_kwargs: dict, root: Path, audio: Path) -> tuple[str, list, dict]:
    """The pipeline on a fresh local Ray; its log, the actors Ray ran (state API) and the shards."""
    import ray
    from ray.util.state import list_actors

    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # the plan lines, and the actors' logs that Ray forwards
        ray.init(address="local", include_dashboard=True, log_to_driver=True, **ray_kwargs)
        try:
            run(load_pipeline_config(str(pipeline_yaml(root, audio, mix=True)), [f"root={root}"]))
            actors = list_actors(address=ray.get_runtime_context().gcs_address, detail=True, limit=1000)
        finally:
            ray.shutdown()
    print(log.getvalue()[-5000:])
    samples, keys = read_shards(root / "data" / "shards")
    assert len(keys) == len(samples), "no sample is in two shards"
    return log.getvalue(), actors, samples


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
