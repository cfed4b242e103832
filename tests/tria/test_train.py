"""The trainer in one process: metrics, checkpoints, exact resume, curriculum, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from shard_fixtures import make_corpus, train_yaml
from tria.checkpoint import load_checkpoint
from tria.curriculum import CurriculumConfig, allowed_codebooks, codebook_weights, fine_weight
from tria.train import Trainer, load_train_config, main


def _losses(run_dir):
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "metrics" in r and "train/loss" in r["metrics"]:
            out[r["step"]] = r["metrics"]["train/loss"]
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root, {("train", "isolated"): 12, ("train", "separated"): 8, ("val", "isolated"): 4})
    return root


def test_runs_logs_and_checkpoints(corpus):
    assert main([str(train_yaml(corpus, "basic")), "num_iters=4", "val_every=2"]) == 0
    run = corpus / "runs" / "basic"
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3, 4] and all(0 < v < 10 for v in losses.values())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["metrics"] for r in records if "metrics" in r and "val/loss" in r["metrics"]]
    assert len(val) == 2 and any(k.startswith("val/acc_cb") for k in val[0])
    ckpt = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert ckpt["train_state"]["step"] == 4 and ckpt["model_config"]["n_channels"] == 64
    assert json.loads((run / "shards.json").read_text())["shards"], "the shard set is recorded"
    assert (run / "config.yaml").read_text().startswith("name: basic")


def _keys(run_dir):
    return [json.loads(line)["keys"] for line in (run_dir / "keys" / "rank0.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_gives_identical_losses(corpus, workers):
    # 20 train samples, batch 4: 5 steps per epoch, so 6 steps cross into epoch 1 (persistent workers)
    opts = [f"data.num_workers={workers}", "data.record_keys=true"]
    full = train_yaml(corpus, f"full{workers}")
    assert main([str(full), *opts]) == 0
    part = train_yaml(corpus, f"part{workers}")
    assert main([str(part), "num_iters=3", *opts]) == 0
    assert main([str(part), "--resume", *opts]) == 0
    a, b = _losses(corpus / "runs" / f"full{workers}"), _losses(corpus / "runs" / f"part{workers}")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    keys = _keys(corpus / "runs" / f"full{workers}")
    assert keys == _keys(corpus / "runs" / f"part{workers}")
    assert len(keys) == 6 and len(set(sum(keys[:5], []))) == 20, "epoch 0 is every sample once"


def test_workers_train_on_the_same_batches_as_no_workers(corpus):
    for workers in (0, 2):
        assert main([str(train_yaml(corpus, f"w{workers}")), "num_iters=11", "val_every=0", "ckpt_every=11",
                     f"data.num_workers={workers}", "data.record_keys=true"]) == 0
    assert _keys(corpus / "runs" / "w0") == _keys(corpus / "runs" / "w2")
    assert _losses(corpus / "runs" / "w0") == pytest.approx(_losses(corpus / "runs" / "w2"), abs=1e-6)


def test_gpu_configs_default_to_persistent_workers():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "conf" / "train"
    gpu = [p for p in sorted(conf.glob("*.yaml")) if p.stem.startswith(("paper_", "release", "curriculum_"))]
    assert len(gpu) >= 9
    for p in gpu:
        assert load_train_config(str(p), []).data.num_workers >= 2, p.name


def test_loss_falls_when_training_longer(corpus):
    assert main([str(train_yaml(corpus, "learn")), "num_iters=40", "optim.lr=3e-3", "mask.p_cfg_dropout=0.0",
                 "val_every=0", "ckpt_every=40", "log_every=1"]) == 0
    losses = _losses(corpus / "runs" / "learn")
    first, last = sum(losses[s] for s in range(1, 6)) / 5, sum(losses[s] for s in range(36, 41)) / 5
    assert last < 0.7 * first, (first, last)


class TestCurriculum:
    def test_separated_examples_never_train_fine_codebooks(self, corpus):
        cfg = load_train_config(str(train_yaml(corpus, "cur")), ["data.tiers=[separated]"])
        trainer = Trainer(cfg)
        seen = set()
        for step in range(200):
            batch = {"tokens": torch.zeros(4, 9, 16, dtype=torch.long), "lengths": torch.full((4,), 16),
                     "tier": ["separated"] * 4}
            seen |= set(trainer._masks(batch, step, train=True)["codebook"].tolist())
        assert seen == {0, 1, 2, 3}
        trainer.close()

    def test_validation_on_every_allowed_codebook(self, corpus):
        cfg = load_train_config(str(train_yaml(corpus, "valcb")), ["data.val_batches=1"])
        trainer = Trainer(cfg)
        drawn = trainer.validate()  # default: one drawn codebook per example (4 examples: at most 4 codebooks)
        assert len([k for k in drawn if k.startswith("val/loss_cb")]) <= 4
        every = Trainer(load_train_config(str(train_yaml(corpus, "valcb")),
                                          ["data.val_batches=1", "val_every_codebook=true"])).validate()
        assert {f"val/loss_cb{k}" for k in range(9)} <= set(every)
        assert every["val/loss"] == drawn["val/loss"]  # the overall loss keeps its single-draw definition
        sep = Trainer(load_train_config(str(train_yaml(corpus, "valsep")), [
            "data.val_batches=1", "val_every_codebook=true", "data.val_split=train", "data.tiers=[separated]"]))
        assert {k for k in sep.validate() if k.startswith("val/loss_cb")} == {f"val/loss_cb{k}" for k in range(4)}
        trainer.close()

    def test_allowed_sets_and_schedule(self):
        cfg = CurriculumConfig.coarse_first(end_step=100)
        allowed = allowed_codebooks(["isolated", "separated", "synthetic"], cfg)
        assert allowed.sum(1).tolist() == [9, 4, 9] and allowed[1, :4].all() and not allowed[1, 4:].any()
        assert fine_weight(0, cfg) == 0.0 and fine_weight(50, cfg) == 0.5 and fine_weight(200, cfg) == 1.0
        w = codebook_weights(0, cfg)
        assert w[:4].tolist() == [1.0] * 4 and w[4:].sum() == 0
        late = CurriculumConfig.fine_late(start_step=10)
        assert fine_weight(9, late) == 0.0 and fine_weight(10, late) == 0.0 and fine_weight(11, late) == 1.0
        with pytest.raises(ValueError, match="unknown tiers"):
            CurriculumConfig(tier_codebooks={"noisy": 3})


def test_no_matching_shards_is_a_clear_error(corpus):
    with pytest.raises(ValueError, match="no prompt set matches the requested features config .*features_id=feat-"):
        Trainer(load_train_config(str(train_yaml(corpus, "bad")), ["features.n_bands=3"]))
    with pytest.raises(ValueError, match="no 'train' token shards .* Run the pipeline with the same codec"):
        Trainer(load_train_config(str(train_yaml(corpus, "bad")), ["codec.seed=7"]))


def test_bad_config_key_is_rejected(corpus, capsys):
    assert main([str(train_yaml(corpus, "typo")), "optim.learning_rate=1"]) == 2
    assert "unknown config key(s) optim.learning_rate" in capsys.readouterr().err
