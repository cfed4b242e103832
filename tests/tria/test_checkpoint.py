"""Tests for tria/checkpoint.py: round trip, atomic write, and clear errors for bad files."""

import dataclasses
import os

import pytest
import torch

from tria.checkpoint import (
    FORMAT,
    CheckpointError,
    build_model_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from tria.model import ModelConfig, tria_tiny


@dataclasses.dataclass(frozen=True)
class FakeFeatures:  # stands in for tria.features.RhythmFeatureConfig
    sample_rate: int = 44100
    n_bands: int = 2
    quantization_levels: int = 33


def save(path, model=None, **kw):
    model = model or tria_tiny()
    args = dict(model_config=model.cfg, model=model, codec_id="dac44k-random", features=FakeFeatures(),
                features_id="abc123")
    args.update(kw)
    return save_checkpoint(path, **args)


def test_round_trip_rebuilds_identical_model(tmp_path):
    torch.manual_seed(3)
    model = tria_tiny(n_feats=3, n_registers=2).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 9, 4, dtype=torch.long), torch.zeros(1, 3, 4), torch.zeros(1, dtype=torch.long),
          torch.zeros(1, 9, 4, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)).sum().backward()
    opt.step()
    path = save(tmp_path / "sub" / "ckpt.pt", model, train_state={"step": 7, "optimizer": opt.state_dict()})
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT
    assert ckpt["codec_id"] == "dac44k-random" and ckpt["features_id"] == "abc123"
    assert ckpt["features"] == {"sample_rate": 44100, "n_bands": 2, "quantization_levels": 33}
    assert ckpt["model_config"] == model.cfg.to_dict()
    assert ckpt["train_state"]["step"] == 7 and "state" in ckpt["train_state"]["optimizer"]
    rebuilt = build_model_from_checkpoint(ckpt)
    assert rebuilt.cfg == model.cfg and not rebuilt.training
    assert rebuilt.tokens_emb.weight is rebuilt.head.weight  # still tied after loading
    for (k, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), k
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["ckpt.pt"]  # no temp file left


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = save(tmp_path / "c.pt")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(junk)
    good = save(tmp_path / "good.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(cut)


def test_wrong_format_and_missing_keys(tmp_path):
    torch.save({"model": {}}, tmp_path / "raw.pt")
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(tmp_path / "raw.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"format": FORMAT, "model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks keys"):
        load_checkpoint(tmp_path / "partial.pt")


def test_arbitrary_objects_are_refused(tmp_path):
    torch.save({"format": FORMAT, "payload": FakeFeatures()}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "obj.pt")


def test_config_and_weight_mismatch(tmp_path):
    ckpt = load_checkpoint(save(tmp_path / "c.pt"))
    bad_cfg = {**ckpt, "model_config": {**ckpt["model_config"], "n_experts": 4}}
    with pytest.raises(CheckpointError, match="unknown fields"):
        build_model_from_checkpoint(bad_cfg)
    other = {**ckpt, "model_config": ModelConfig(n_channels=32, n_layers=1, n_heads=2).to_dict()}
    with pytest.raises(CheckpointError, match="do not match"):
        build_model_from_checkpoint(other)
    invalid = {**ckpt, "model_config": {**ckpt["model_config"], "n_heads": 5}}
    with pytest.raises(CheckpointError, match="invalid model_config"):
        build_model_from_checkpoint(invalid)
    assert isinstance(CheckpointError("x"), ValueError)
