"""Shards on object storage: the pipeline writes its field sets to ``s3://`` (an S3-compatible server on
127.0.0.1, moto's server mode, started here) through the same pyarrow code path as real S3, cleans up an
orphan and a partial upload there, and ``tria.train`` trains 3 steps reading them back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from net import free_port
from pipeline_fixtures import make_drums
from pipelines.run import load_pipeline_config, run
from tria.catalog import Catalogue

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUCKET = "tria-shards"


@pytest.fixture
def s3(monkeypatch):
    """An S3 endpoint on 127.0.0.1; endpoint, region and credentials in the environment, as pyarrow reads them."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import boto3

    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield f"s3://{BUCKET}/demo"
    finally:
        server.stop()


@pytest.fixture
def local_ray(s3):  # started after the environment is set: workers inherit the endpoint and credentials
    import ray
    import ray.data

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def _objects(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path) + 1:] for i in infos if i.type == pafs.FileType.File)


def test_pipeline_writes_shards_to_s3_and_the_trainer_reads_them(tmp_path, s3, local_ray):
    from tria.train import main as train_main

    audio = make_drums(tmp_path / "audio", n_loops=3, seconds=7.0, bad=False)[0].parent
    cfg = {"name": "s3", "root": str(tmp_path), "shard_root": s3,
           "sources": [{"name": "local_folder", "location": str(audio), "tier": "isolated", "licence": "test",
                        "split": "train"}],
           "prompts": {"n_variants": 2, "augment": {"preset": "release"}, "features": {"preset": "release"}},
           "codec": {"weights": "random", "size": "tiny"}, "shard": {"samples_per_shard": 2, "flac_splits": []},
           "ray": {"prompt_batch_size": 2, "tokenize_batch_size": 2}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    summary = run(load_pipeline_config(str(tmp_path / "pipeline.yaml"), []))
    assert summary["encoded"] == summary["featurised"] == summary["samples"] == 3

    with Catalogue(tmp_path / "data" / "catalogue.duckdb", read_only=True) as cat:
        paths = [r[0] for r in cat.execute("SELECT path FROM shards WHERE status = 'ok' ORDER BY path").rows]
    assert len(paths) == 4 and all(p.startswith(s3 + "/train/isolated/") for p in paths)
    objects = _objects(s3)
    assert objects == sorted([p[len(s3) + 1:] for p in paths] + [p[len(s3) + 1:] + ".idx" for p in paths])
    assert not (tmp_path / "data" / "shards").exists(), "nothing was written to a local shard folder"

    # an orphan (uploaded, never registered) and a stray temp object: the next run removes both, keeps the rest
    import pyarrow.fs as pafs

    fs, prefix = pafs.FileSystem.from_uri(s3)
    for name in ("train/isolated/tokens-x/shard-000009.tar", "train/isolated/tokens-x/shard-000009.tar.idx",
                 "train/isolated/tokens-x/shard-000010.tar.tmp"):
        with fs.open_output_stream(f"{prefix}/{name}") as f:
            f.write(b"junk")
    again = run(load_pipeline_config(str(tmp_path / "pipeline.yaml"), []))
    assert again["written"] == 0 and _objects(s3) == objects

    train_cfg = {"name": "s3", "root": str(tmp_path), "out_dir": "runs", "num_iters": 3, "log_every": 1,
                 "val_every": 100, "sample_every": 0, "ckpt_every": 3, "model": {"size": "tiny"},
                 "features": {"preset": "release"}, "codec": {"size": "tiny"}, "amp": False,
                 "data": {"catalogue": "data/catalogue.duckdb", "batch_size": 2, "val_batches": 0,
                          "shuffle_buffer": 4}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    assert train_main([str(tmp_path / "train.yaml")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "runs" / "s3" / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({x["step"] for x in lines if "train/loss" in x.get("metrics", {})})
    assert steps[-1] == 3, steps
    selection = json.loads((tmp_path / "runs" / "s3" / "shards.json").read_text())
    assert all(s["path"].startswith("s3://") and s["prompts"].startswith("s3://") for s in selection["shards"])
