"""The pipeline on a cluster of one 1-CPU node (``ray.cluster_utils.Cluster``, submitted with
``orchestration/submit_pipeline.sh``). A CPU codec actor holds its CPU for the whole shard stage: sized by
the cluster alone, the codec pool took every CPU and the prompt and shard-writing tasks waited for ever
(the pipeline benchmark hung on 1-CPU nodes). Here the plan runs the prompts on the codec actors and
writes with no CPU: the run finishes, complete. (Where a CPU can be spared, the plan leaves it free:
tests/pipelines/test_resources.py.)"""

from __future__ import annotations

import pytest

from pipeline_fixtures import make_drums
from ray_fixtures import check_catalogue, local_cluster, pipeline_yaml, shared_ray_address, submit_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    audio = tmp_path_factory.mktemp("audio")
    make_drums(audio, n_loops=2, seconds=14.0, bad=False)  # 4 excerpts
    return audio


def _run(url: str, root, corpus) -> str:
    proc = submit_pipeline(url, pipeline_yaml(root, corpus, per_shard=2), root)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:  # hung: the job's tasks never got a CPU
            proc.kill()
    assert proc.returncode == 0, out[-5000:]
    assert len(check_catalogue(root)) == 4
    return out


def test_a_cluster_of_one_cpu_finishes(corpus, tmp_path):
    before = shared_ray_address()
    with local_cluster(head_cpus=1, dashboard=True) as (_, url, _add_node):
        # the job found this cluster through the cluster's own temp folder, and the user's Ray is untouched
        assert shared_ray_address() == before
        out = _run(url, tmp_path, corpus)
    assert shared_ray_address() == before
    assert "[prompts] the codec actors may hold all 1 CPUs: the prompts run on them" in out
    assert "[shard] the codec actors may hold every CPU: the shard-writing tasks ask for none" in out
    assert "[tokenize] actor pool 1..1 actors, each asks for CPU 1; prompts on the codec actors" in out
