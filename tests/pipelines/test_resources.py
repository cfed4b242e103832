"""The resource rule of the GPU stages (pipelines/resources.py): what an actor asks Ray for, how far its
pool may grow, where the prompts run, and which device an actor uses. Pure functions, no Ray start."""

from __future__ import annotations

import pytest

from pipelines import resources as R
from pipelines.resources import (ActorPoolConfig, TaskConfig, actor_device, plan_pool, plan_shard_stages,
                                 prompts_on_codec_actors)
from pipelines.run import RayConfig, load_pipeline_config, tokenize_pool
from tria.config import ConfigError

GPU_CLUSTER = {"CPU": 32.0, "GPU": 4.0, "memory": 1e11}
CPU_CLUSTER = {"CPU": 6.0, "memory": 1e10}


def test_gpu_cluster_one_gpu_per_actor_pool_up_to_the_gpus():
    plan = plan_pool("tokenize", ActorPoolConfig(), GPU_CLUSTER)
    assert (plan.num_gpus, plan.num_cpus, plan.min_size, plan.max_size) == (1.0, None, 1, 4)
    args = plan.map_batches_args()
    assert args["num_gpus"] == 1.0 and "num_cpus" not in args and "resources" not in args
    assert (args["compute"].min_size, args["compute"].max_size) == (1, 4)
    assert "max_restarts" not in args, "Ray Data's own defaults (-1) are not passed again"


def test_fractional_gpus_share_a_gpu():
    plan = plan_pool("tokenize", ActorPoolConfig(num_gpus=0.5, num_cpus=2), GPU_CLUSTER)
    assert (plan.num_gpus, plan.num_cpus, plan.max_size) == (0.5, 2, 8)
    assert plan.map_batches_args()["num_cpus"] == 2


def test_cpu_only_cluster_runs_on_cpus_pool_up_to_the_cpus():
    plan = plan_pool("separate", ActorPoolConfig(), CPU_CLUSTER)
    assert (plan.num_gpus, plan.num_cpus, plan.max_size, plan.uses_gpu) == (0.0, 1.0, 6, False)
    assert "num_gpus" not in plan.map_batches_args()
    assert plan_pool("separate", ActorPoolConfig(num_cpus=4), CPU_CLUSTER).max_size == 1


def test_device_cpu_asks_for_no_gpu_unless_told():
    assert plan_pool("tokenize", ActorPoolConfig(), GPU_CLUSTER, device="cpu").num_gpus == 0
    assert plan_pool("tokenize", ActorPoolConfig(num_gpus=1), GPU_CLUSTER, device="cpu").num_gpus == 1


def test_custom_resources_cap_the_pool_and_are_passed(capsys):
    cluster = GPU_CLUSTER | {"codec": 3.0}
    plan = plan_pool("tokenize", ActorPoolConfig(resources={"codec": 1}), cluster)
    assert plan.max_size == 3 and plan.map_batches_args()["resources"] == {"codec": 1}
    assert "warning" not in capsys.readouterr().out
    plan = plan_pool("tokenize", ActorPoolConfig(resources={"codec": 1}), GPU_CLUSTER)
    assert "codec 1 (cluster: 0)" in capsys.readouterr().out and plan.max_size == 1


def test_explicit_bounds_and_retries_win(capsys):
    cfg = ActorPoolConfig(num_gpus=1, min_actors=2, max_actors=16, max_restarts=3, max_task_retries=5)
    plan = plan_pool("tokenize", cfg, CPU_CLUSTER)  # an autoscaling cluster with no GPU node yet
    assert (plan.num_gpus, plan.min_size, plan.max_size) == (1.0, 2, 16)
    assert "GPU 1 (cluster: 0)" in capsys.readouterr().out
    args = plan.map_batches_args()
    assert (args["max_restarts"], args["max_task_retries"]) == (3, 5)
    assert "actor pool 2..16 actors, each asks for GPU 1" in plan.describe()


@pytest.mark.parametrize("bad", [dict(num_gpus=-1), dict(min_actors=0), dict(min_actors=3, max_actors=2),
                                 dict(resources={"GPU": 1}), dict(resources={"codec": 0})])
def test_bad_pool_configs_are_refused(bad):
    with pytest.raises(ValueError):
        ActorPoolConfig(**bad)


def test_prompts_placement():
    gpu = plan_pool("tokenize", ActorPoolConfig(), GPU_CLUSTER)
    cpu = plan_pool("tokenize", ActorPoolConfig(), CPU_CLUSTER)
    assert prompts_on_codec_actors("auto", gpu) and not prompts_on_codec_actors("auto", cpu)
    assert prompts_on_codec_actors("codec_actors", cpu) and not prompts_on_codec_actors("cpu_tasks", gpu)
    with pytest.raises(ValueError, match="prompts_on"):
        prompts_on_codec_actors("gpu", gpu)


def _stages(cluster, pool=ActorPoolConfig(), prompts="auto", writer=TaskConfig()):
    codec = plan_pool("tokenize", pool, cluster)
    return plan_shard_stages(codec, cluster, prompts, True, writer, pool_from_cluster=pool.max_actors is None)


def test_a_cpu_codec_pool_sized_from_the_cluster_leaves_a_cpu_for_the_tasks():
    s = _stages(CPU_CLUSTER)  # 6 CPUs: the pool alone would take all 6
    assert (s.codec.min_size, s.codec.max_size) == (1, 5) and not s.prompts_on_actors
    assert s.writer.num_cpus == 1.0
    assert s.notes == ("[tokenize] the codec pool stops at 5 actor(s) so that 1 of the cluster's 6 CPUs stays free "
                       "for the prompt and shard-writing tasks",)
    two = _stages({"CPU": 2.0})  # two 1-CPU nodes: one codec actor, one CPU for the tasks
    assert two.codec.max_size == 1 and not two.prompts_on_actors and two.writer.num_cpus == 1.0
    wide = _stages(CPU_CLUSTER, ActorPoolConfig(num_cpus=2))  # 2 CPUs an actor: 3 would take all 6
    assert wide.codec.max_size == 2 and "stops at 2 actor(s)" in wide.notes[0]
    assert not _stages({"CPU": 7.0}, ActorPoolConfig(num_cpus=2)).notes  # 3 actors leave 1 free already


def test_where_the_codec_may_hold_every_cpu_prompts_go_to_it_and_writers_ask_for_none():
    one = _stages({"CPU": 1.0})
    assert one.codec.max_size == 1 and one.prompts_on_actors and one.writer.num_cpus == 0.0
    assert any("prompts run on them" in n for n in one.notes) and any("ask for none" in n for n in one.notes)
    by_hand = _stages(CPU_CLUSTER, ActorPoolConfig(max_actors=6))  # sized by hand: obeyed, the tasks adapt
    assert by_hand.codec.max_size == 6 and by_hand.prompts_on_actors and by_hand.writer.num_cpus == 0.0
    forced = _stages({"CPU": 1.0}, prompts="cpu_tasks")  # told so: obeyed, with a warning
    assert not forced.prompts_on_actors and any("warning" in n for n in forced.notes)


def test_gpu_codec_pools_and_no_codec_are_left_alone():
    gpu = _stages(GPU_CLUSTER)
    assert gpu.codec == plan_pool("tokenize", ActorPoolConfig(), GPU_CLUSTER) and gpu.prompts_on_actors
    assert not gpu.notes and gpu.writer == TaskConfig()
    none = plan_shard_stages(None, {"CPU": 1.0}, "auto", True, TaskConfig(), True)
    assert none.codec is None and not none.prompts_on_actors and not none.notes


def test_pipeline_config_overrides(tmp_path):
    cfg = load_pipeline_config(None, ["ray.tokenize.num_gpus=0.5", "ray.tokenize.resources={codec: 1}",
                                      "ray.separate.max_actors=3", "ray.prompts.resources={cpu_node: 1}",
                                      "ray.prompts_on=cpu_tasks"])
    assert cfg.ray.tokenize == ActorPoolConfig(num_gpus=0.5, resources={"codec": 1})
    assert cfg.ray.separate.max_actors == 3 and cfg.ray.prompts == TaskConfig(resources={"cpu_node": 1})
    assert R.task_args(cfg.ray.prompts) == {"num_cpus": 1.0, "resources": {"cpu_node": 1}}
    with pytest.raises(ConfigError, match="min_actors"):
        load_pipeline_config(None, ["ray.tokenize.min_actors=0"])
    fixed = tokenize_pool(RayConfig(tokenize_actors=2))
    assert (fixed.min_actors, fixed.max_actors) == (2, 2)


def test_actor_device_outside_ray_and_explicit(monkeypatch, capsys):
    monkeypatch.setattr(R, "_ray_gpu_ids", lambda: [])
    assert actor_device("auto") == "cpu" and actor_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="torch sees no CUDA"):
        actor_device("cuda")
    monkeypatch.setattr(R, "_ray_gpu_ids", lambda: [1])  # Ray assigned a GPU that torch cannot see
    assert actor_device("auto", "tokenize") == "cpu"
    assert "[tokenize] Ray gave this actor GPU 1, but torch sees no CUDA device" in capsys.readouterr().out
    monkeypatch.setattr(R.torch.cuda, "is_available", lambda: True)
    assert actor_device("auto") == "cuda:0", "the GPU Ray gave is the actor's device 0"


def test_prompts_on_the_codec_actor_equal_prompts_as_cpu_tasks(tmp_path):
    """The two placements of the prompts stage give the same tokens and features (here both on the CPU)."""
    import numpy as np

    from pipeline_fixtures import make_drums
    from pipelines.stages.groups import GroupPromptsTokenizer, GroupTokenizer, group_prompts
    from pipelines.stages.prompts import PromptConfig
    from tria.codec import CodecConfig

    path = str(make_drums(tmp_path, n_loops=1, seconds=7.0, bad=False)[0])
    excerpts = [{"key": k, "source": "s", "track": "t", "stem": "drums", "path": path, "split": "val",
                 "tier": "isolated", "offset_s": off, "duration_s": 6.0, "loudness_db": -20.0}
                for k, off in (("a", 0.0), ("b", 0.5))]
    group = {"group_id": "g", "split": "val", "tier": "isolated", "idx": 0, "want_tokens": True,
             "want_prompts": True, "excerpts": excerpts}
    batch = {k: np.asarray([v], dtype=object) for k, v in group.items()}
    prompts = PromptConfig(n_variants=2)
    codec = CodecConfig(weights="random", size="tiny", device="cpu")
    fused = GroupPromptsTokenizer(codec, ("val",), 6.0, 2, prompts)(dict(batch))
    apart = GroupTokenizer(codec, ("val",), 6.0, 2)(group_prompts(dict(batch), prompts, chunk=2))
    assert fused.keys() == apart.keys()
    for k in ("tokens", "feats", "n_frames", "prompt_error", "token_error"):
        assert np.array_equal(np.asarray(fused[k][0]), np.asarray(apart[k][0])), k
    assert fused["feats"][0].shape[:2] == (2, 2) and fused["tokens"][0].shape[:2] == (2, 9)
    assert list(fused["flac"][0]) == list(apart["flac"][0]) and all(f != b"" for f in fused["flac"][0])
