"""One rule for the Ray resources and the device of the pipeline's GPU stages (separate, tokenize).

On the driver, :func:`plan_pool` turns a stage's :class:`ActorPoolConfig` and the cluster's resources
(``ray.cluster_resources()``) into a :class:`PoolPlan`: what each actor asks Ray for and how far its
pool may autoscale. Left at their defaults:

* an actor asks for one GPU when the cluster has any (``num_gpus: 0.5`` lets two actors share one), and
  for no GPU on a CPU-only cluster;
* the pool starts with ``min_actors`` (1) and may grow to as many actors as the cluster holds: its GPUs
  divided by ``num_gpus``, or its CPUs divided by ``num_cpus`` on a CPU-only cluster, and no more than
  each custom resource allows (``resources: {codec: 1}`` pins the actors to nodes started with
  ``ray start --resources '{"codec": N}'``);
* actors that die with their node are restarted and their batches retried (Ray Data's defaults,
  ``max_restarts=-1``, ``max_task_retries=-1``, set here explicitly).

The cluster is read once, when the stage starts. An autoscaling cluster that starts with no GPU node
reports no GPU then: set ``num_gpus`` and ``max_actors`` explicitly there (the actors then wait for
the autoscaler to add the nodes they ask for).

Inside an actor, :func:`actor_device` picks the device Ray gave it: ``cuda:0`` when Ray assigned it a
GPU (Ray sets ``CUDA_VISIBLE_DEVICES`` to that GPU, so it is the actor's device 0) and torch sees CUDA;
``cpu`` otherwise. A GPU that Ray assigned but torch cannot see (``ray.init(num_gpus=2)`` on a machine
without one, or a CPU build of torch) falls back to the CPU and says so in the actor's log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from tria.codec import resolve_device

__all__ = ["ActorPoolConfig", "PoolPlan", "ShardStagePlan", "TaskConfig", "PROMPTS_ON", "actor_device", "plan_pool",
           "plan_shard_stages", "prompts_on_codec_actors", "task_args"]


@dataclass(frozen=True)
class ActorPoolConfig:
    """Resources of one actor of a GPU stage and the bounds of its autoscaling pool (``ray.<stage>``).

    Attributes:
        num_gpus: GPUs per actor; None = 1 where the cluster has GPUs, else 0. Fractions share a GPU.
        num_cpus: CPUs per actor; None = 1 without a GPU, and Ray Data's default with one.
        resources: custom Ray resources per actor, e.g. ``{codec: 1}``.
        min_actors: actors started at once.
        max_actors: upper bound of the pool; None = as many as the cluster holds (see module docstring).
        max_restarts: restarts of an actor that died (its node went away); -1 = no limit.
        max_task_retries: retries of a batch whose actor died; -1 = no limit.
    """

    num_gpus: float | None = None
    num_cpus: float | None = None
    resources: dict = field(default_factory=dict)
    min_actors: int = 1
    max_actors: int | None = None
    max_restarts: int = -1
    max_task_retries: int = -1

    def __post_init__(self) -> None:
        if self.num_gpus is not None and self.num_gpus < 0:
            raise ValueError(f"num_gpus must be >= 0 or None, got {self.num_gpus}")
        if self.num_cpus is not None and self.num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus}")
        if self.min_actors < 1:
            raise ValueError(f"min_actors must be >= 1, got {self.min_actors}")
        if self.max_actors is not None and self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) must be >= min_actors ({self.min_actors})")
        for name, amount in self.resources.items():
            if name in ("CPU", "GPU", "memory") or float(amount) <= 0:
                raise ValueError(f"resources: {name}={amount} must be a custom resource with an amount > 0 "
                                 "(use num_cpus / num_gpus for CPUs and GPUs)")


@dataclass(frozen=True)
class TaskConfig:
    """Resources of one task of a CPU stage (``ray.prompts``): custom resources pin it to nodes."""

    num_cpus: float = 1.0
    resources: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PoolPlan:
    """What one stage's actors ask Ray for, and its pool bounds."""

    stage: str
    num_gpus: float
    num_cpus: float | None  # None: not set (Ray Data's default for a GPU actor)
    resources: dict
    min_size: int
    max_size: int
    max_restarts: int
    max_task_retries: int

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0

    def map_batches_args(self) -> dict[str, Any]:
        """Keyword arguments for ``Dataset.map_batches`` with a callable class."""
        import ray.data

        args: dict[str, Any] = dict(
            compute=ray.data.ActorPoolStrategy(min_size=self.min_size, max_size=self.max_size))
        if self.num_cpus is not None:
            args["num_cpus"] = self.num_cpus
        # -1/-1 are Ray Data's defaults for actor pools; passing them anyway draws a deprecation warning.
        if self.max_restarts != -1 or self.max_task_retries != -1:
            args.update(max_restarts=self.max_restarts, max_task_retries=self.max_task_retries)
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        if self.resources:
            args["resources"] = dict(self.resources)
        return args

    def describe(self) -> str:
        asks = [f"GPU {self.num_gpus:g}"] if self.uses_gpu else []
        asks += [f"CPU {self.num_cpus:g}"] if self.num_cpus is not None else []
        asks += [f"{k} {float(v):g}" for k, v in sorted(self.resources.items())]
        return (f"[{self.stage}] actor pool {self.min_size}..{self.max_size} actors, each asks for "
                f"{', '.join(asks)}")


def plan_pool(stage: str, config: ActorPoolConfig, cluster: Mapping[str, float], device: str = "auto") -> PoolPlan:
    """The plan of one GPU stage on a cluster with these total resources (``ray.cluster_resources()``).

    ``device`` is the stage's own device setting: "cpu" there means no GPU unless ``num_gpus`` says so.

    Prints a warning (and still plans) when an actor asks for more than the cluster has now: an
    autoscaling cluster adds the nodes; a fixed one would wait forever, which the warning names.
    """
    gpus = float(cluster.get("GPU", 0))
    if config.num_gpus is not None:
        num_gpus = float(config.num_gpus)
    else:
        num_gpus = 1.0 if gpus > 0 and device != "cpu" else 0.0
    num_cpus = config.num_cpus if config.num_cpus is not None or num_gpus else 1.0
    cpus = float(cluster.get("CPU", 0))
    missing = []
    if num_gpus > gpus:
        missing.append(f"GPU {num_gpus:g} (cluster: {gpus:g})")
    if (num_cpus or 0) > cpus:
        missing.append(f"CPU {num_cpus:g} (cluster: {cpus:g})")
    missing += [f"{k} {float(v):g} (cluster: {float(cluster.get(k, 0)):g})" for k, v in config.resources.items()
                if float(v) > float(cluster.get(k, 0))]
    if missing:
        print(f"[{stage}] warning: one actor asks for more than the cluster has now: {', '.join(missing)}; "
              "its actors start only when an autoscaler adds such a node", flush=True)
    caps = [_fits(gpus, num_gpus) if num_gpus else _fits(cpus, num_cpus or 0)]
    caps += [_fits(float(cluster.get(k, 0)), float(v)) for k, v in config.resources.items()]
    held = max(1, min(c for c in caps if c is not None)) if any(c is not None for c in caps) else 1
    max_size = config.max_actors if config.max_actors is not None else held
    return PoolPlan(stage=stage, num_gpus=num_gpus, num_cpus=num_cpus, resources=dict(config.resources),
                    min_size=min(config.min_actors, max_size), max_size=max_size,
                    max_restarts=config.max_restarts, max_task_retries=config.max_task_retries)


def _fits(total: float, per_actor: float) -> int | None:
    """Actors of ``per_actor`` that ``total`` holds (None: the actor does not ask for it)."""
    return math.floor(total / per_actor + 1e-9) if per_actor > 0 else None


def task_args(config: TaskConfig) -> dict[str, Any]:
    """Keyword arguments for ``Dataset.map_batches`` with a function (a CPU task stage)."""
    args: dict[str, Any] = {"num_cpus": config.num_cpus}
    if config.resources:
        args["resources"] = dict(config.resources)
    return args


PROMPTS_ON = ("auto", "codec_actors", "cpu_tasks")


def prompts_on_codec_actors(mode: str, codec_plan: PoolPlan) -> bool:
    """Where the prompts stage (augmentation + rhythm features) runs: on the codec actors, batched on
    their device, or as CPU tasks. "auto": on the codec actors when they have GPUs (a GPU codec would
    otherwise wait for CPU prompts), as CPU tasks on a CPU-only cluster (spread over every CPU)."""
    if mode not in PROMPTS_ON:
        raise ValueError(f"ray.prompts_on must be one of {', '.join(PROMPTS_ON)}, got {mode!r}")
    return mode == "codec_actors" or (mode == "auto" and codec_plan.uses_gpu)


@dataclass(frozen=True)
class ShardStagePlan:
    """Where the shard stage's work runs: the codec pool (None when no tokens are made), whether the
    prompts run on its actors, and what each shard-writing task asks for."""

    codec: PoolPlan | None
    prompts_on_actors: bool
    writer: TaskConfig
    notes: tuple[str, ...] = ()


def plan_shard_stages(codec: PoolPlan | None, cluster: Mapping[str, float], prompts_mode: str, want_prompts: bool,
                      writer: TaskConfig, pool_from_cluster: bool) -> ShardStagePlan:
    """Fit the shard stage's three kinds of work (prompts, codec, writes) onto the cluster's CPUs together.

    A CPU codec actor holds its CPU for the whole stage. Sized by :func:`plan_pool` alone, the pool may
    grow to every CPU of the cluster, and then the prompt and shard-writing tasks it depends on never get
    one: the run hangs (seen on a cluster of 1-CPU nodes). So, on a CPU-only codec pool:

    * a pool sized from the cluster (``pool_from_cluster``: no ``max_actors`` set) leaves one CPU free
      for the tasks, whenever the cluster has a CPU to spare (1 actor at least);
    * where the codec actors may still hold every CPU (a 1-CPU cluster, or a pool sized by hand), the
      prompts run on the codec actors ("auto") and the writing tasks ask for no CPU (they pack a tar
      and write it: I/O, not compute), so that nothing waits for a CPU that never comes free.

    Each change is returned as a note that the driver prints.
    """
    notes: list[str] = []
    on_actors = codec is not None and want_prompts and prompts_on_codec_actors(prompts_mode, codec)
    if codec is None or codec.uses_gpu or not codec.num_cpus:
        return ShardStagePlan(codec, on_actors, writer)
    cpus, per_actor = float(cluster.get("CPU", 0)), float(codec.num_cpus)
    if pool_from_cluster and codec.max_size * per_actor > cpus - 1:
        spare = max(1, math.floor((cpus - 1) / per_actor + 1e-9))
        if spare < codec.max_size:
            codec = replace(codec, min_size=min(codec.min_size, spare), max_size=spare)
            notes.append(f"[tokenize] the codec pool stops at {spare} actor(s) so that 1 of the cluster's {cpus:g} "
                         "CPUs stays free for the prompt and shard-writing tasks")
    free = cpus - codec.max_size * per_actor
    if free < 1:
        if want_prompts and not on_actors and prompts_mode == "auto":
            on_actors = True
            notes.append(f"[prompts] the codec actors may hold all {cpus:g} CPUs: the prompts run on them")
        if want_prompts and not on_actors:
            notes.append(f"[prompts] warning: ray.prompts_on=cpu_tasks, and the codec actors may hold all {cpus:g} "
                         "CPUs: prompt tasks wait until the pool shrinks; set ray.tokenize.max_actors lower")
        if writer.num_cpus > max(free, 0.0):
            writer = replace(writer, num_cpus=0.0)
            notes.append("[shard] the codec actors may hold every CPU: the shard-writing tasks ask for none")
    return ShardStagePlan(codec, on_actors, writer, tuple(notes))


def actor_device(requested: str = "auto", stage: str = "actor") -> str:
    """The torch device of a Ray actor (or of a plain process).

    ``requested`` other than "auto" is obeyed ("cuda" without CUDA is a clear error). "auto": ``cuda:0``
    when Ray gave this actor a GPU and torch sees CUDA; ``cpu`` with a message in the log when Ray gave a
    GPU that torch cannot see; outside Ray (or with no GPU from Ray) what :func:`resolve_device` picks.
    """
    if requested != "auto":
        return resolve_device(requested)
    gpu_ids = _ray_gpu_ids()
    if gpu_ids:
        if torch.cuda.is_available():
            return "cuda:0"
        print(f"[{stage}] Ray gave this actor GPU {', '.join(map(str, gpu_ids))}, but torch sees no CUDA device "
              "(a GPU declared with num_gpus that this node does not have, or a CPU build of torch): running on CPU",
              flush=True)
        return "cpu"
    return resolve_device("auto")


def _ray_gpu_ids() -> list:
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except Exception:  # not in a Ray worker (plain process, benchmark pool)
        return []
