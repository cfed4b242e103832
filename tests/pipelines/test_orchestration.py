"""The cluster templates are valid and run what the two-node test runs: orchestration/cluster.yaml against
Ray's own cluster-config schema, orchestration/kuberay-rayjob.yaml against the RayJob fields of KubeRay's
ray.io/v1 API reference, and orchestration/submit_pipeline.sh's argument handling (no Ray needed)."""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipelines.run import load_pipeline_config

REPO = Path(__file__).resolve().parents[2]
ORCH = REPO / "orchestration"
CODEC_RESOURCES = {"codec": 1}  # what tests/integration/test_pipeline_two_nodes.py pins the codec actors with

# Fields per object, from KubeRay's CRD API reference (ray.io/v1, KubeRay 1.6: docs.ray.io "KubeRay CRD
# API reference" and the RayJob quick start). Only fields confirmed there are listed; a key outside these
# sets fails the test.
RAYJOB_SPEC = {"entrypoint", "rayClusterSpec", "clusterSelector", "shutdownAfterJobFinishes",
               "ttlSecondsAfterFinished", "activeDeadlineSeconds", "runtimeEnvYAML", "suspend", "submissionMode",
               "backoffLimit", "submitterPodTemplate", "submitterConfig", "entrypointNumCpus", "entrypointNumGpus",
               "entrypointResources", "jobId", "metadata", "deletionPolicy", "managedBy"}
RAYCLUSTER_SPEC = {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                   "workerGroupSpecs", "authOptions", "headServiceAnnotations", "suspend", "managedBy",
                   "gcsFaultToleranceOptions"}
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "enableIngress", "headService"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                "scaleStrategy", "numOfHosts", "suspend", "idleTimeoutSeconds"}


def _yaml(name: str) -> dict:
    return yaml.safe_load((ORCH / name).read_text())


def _ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_yaml_is_valid_for_ray_up():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _yaml("cluster.yaml")
    jsonschema.validate(cfg, _ray_schema())
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs before launching anything
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["max_worker"] = 4  # a misspelt key is caught
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _ray_schema())
    types = cfg["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}, "the driver's head runs no actors"
    assert types["gpu_worker"]["resources"] == CODEC_RESOURCES, "GPU nodes offer what the codec actors ask for"


def _entrypoint(cmd: str) -> tuple[str, list[str]]:
    argv = shlex.split(cmd)
    assert argv[:3] == ["python", "-m", "pipelines.run"], argv
    return argv[3], argv[4:]


def _check_job(config: str, overrides: list[str]) -> None:
    """The job the templates submit loads, with the shard root on object storage and the codec pinning."""
    assert (REPO / config).is_file(), config
    cfg = load_pipeline_config(str(REPO / config), overrides)
    assert cfg.root == "/data" and cfg.shard_root.startswith("s3://")
    assert cfg.ray.tokenize.resources == CODEC_RESOURCES
    assert cfg.ray.tokenize.num_gpus == cfg.ray.separate.num_gpus == 1, "GPU nodes start at 0: asked explicitly"


def test_kuberay_rayjob_structure_and_job():
    job = _yaml("kuberay-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob") and job["metadata"]["name"]
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC, set(cluster) - RAYCLUSTER_SPEC
    assert cluster["authOptions"]["mode"] in ("token", "disabled")
    assert set(cluster["headGroupSpec"]) <= HEAD_GROUP
    groups = cluster["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for group in [cluster["headGroupSpec"], *groups]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), "rayStartParams are strings"
        assert group["template"]["spec"]["containers"][0]["image"]
    for g in groups:
        assert set(g) <= WORKER_GROUP, set(g) - WORKER_GROUP
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    gpu = next(g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"])
    # KubeRay passes rayStartParams.resources to `ray start --resources` as a quoted JSON string
    assert json.loads(json.loads(gpu["rayStartParams"]["resources"])) == CODEC_RESOURCES
    config, overrides = _entrypoint(spec["entrypoint"])
    assert config.startswith("/app/"), "the image holds the repository at /app"
    _check_job(config.removeprefix("/app/"), overrides)


def test_cluster_yaml_submits_the_same_job():
    text = (ORCH / "cluster.yaml").read_text()
    lines = [ln.lstrip("# ").rstrip("\\ ") for ln in text.splitlines() if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("orchestration/submit_pipeline.sh"))
    cmd = " ".join(lines[start:start + 3]).replace("orchestration/submit_pipeline.sh", "python -m pipelines.run", 1)
    _check_job(*_entrypoint(cmd))


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", str(ORCH / "submit_pipeline.sh"), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # the last call starts Python with torch to load the config: ~20 s on a loaded 2-core machine
def test_submit_script_help_and_bad_arguments(tmp_path):
    out = _script("--help")
    assert out.returncode == 0 and "submit_pipeline.sh [--address URL] [--no-summary] CONFIG" in out.stdout
    assert _script().returncode == 2
    assert _script("--address", "127.0.0.1:8265", "conf/pipeline/demo.yaml").returncode == 2
    assert _script("conf/pipeline/demo.yaml", "novalue").returncode == 2
    bad = _script("conf/pipeline/demo.yaml", "ray.tokenize.min_actors=0")  # fails before any upload
    assert bad.returncode == 2 and "the config does not load" in bad.stderr and "min_actors" in bad.stderr
