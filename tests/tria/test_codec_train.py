"""The codec trainer: a few steps on tiny audio, exact resume, bad audio rejected with a reason, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from pipelines.catalogue import Catalogue
from pipelines.rows import StemRow
from tria.codec import Codec, codec_id
import tria.codec_train as ct
from tria.codec_train import crop_batch, load_codec_train_config, main
from tria.features import rms_db
from tria.metrics import mel_distance

SR = 44_100
# A small DAC (same token layout) so that a step takes well under a second on one core.
ARCH = ["arch.encoder_dim=4", "arch.decoder_dim=16", "arch.latent_dim=32", "threads=1"]


def _clicks(seed: int, seconds: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(int(SR * seconds), np.float32)
    for t in rng.uniform(0, seconds - 0.1, 6):
        i = int(t * SR)
        n = 2000
        x[i:i + n] += (rng.standard_normal(n) * np.exp(-np.arange(n) / 300)).astype(np.float32) * 0.3
    return x


def _stem(path, split, i) -> StemRow:
    return StemRow(source="test", track=f"t{i}", stem="drums", role="drums", tier="isolated", split=split,
                   licence="CC0", path=str(path), sample_rate=SR, n_channels=1, n_samples=SR)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("codec_corpus")
    rows = []
    for i in range(4):
        split = "val" if i == 3 else "train"
        path = root / f"{split}{i}.wav"
        sf.write(path, _clicks(i), SR)
        rows.append(_stem(path, split, i))
    bad = {"corrupt.wav": b"RIFF not really a wav", "silent.wav": None, "short.wav": None}
    (root / "corrupt.wav").write_bytes(bad["corrupt.wav"])
    sf.write(root / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(root / "short.wav", _clicks(9)[:1000], SR)
    rows += [_stem(root / name, "train", 10 + k) for k, name in enumerate(bad)]
    rows.append(_stem(root / "gone.wav", "train", 20))
    with Catalogue(root / "catalogue.duckdb") as cat:
        cat.upsert_stems(rows)
    return root


def _config(root, name):
    path = root / f"{name}.yaml"
    path.write_text(f"name: {name}\nroot: {root}\nout_dir: runs\nnum_iters: 6\nlog_every: 1\neval_every: 0\n"
                    "ckpt_every: 3\ndata: {catalogue: catalogue.duckdb, crop_frames: 16, batch_size: 2}\n")
    return path


def _losses(run):
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "train/loss" in r.get("metrics", {}):
            out[r["step"]] = r["metrics"]["train/loss"]
    return out


@pytest.mark.slow  # ~10 s on an idle 2-core machine
def test_trains_rejects_bad_audio_and_exports(corpus, capsys):
    assert main([str(_config(corpus, "basic")), *ARCH, "num_iters=3", "eval_every=3", "data.eval_seconds=1.0"]) == 0
    run = corpus / "runs" / "basic"
    losses = _losses(run)
    assert sorted(losses) == [1, 2, 3] and all(np.isfinite(v) and v > 0 for v in losses.values())
    rejects = {json.loads(line)["path"].rsplit("/", 1)[-1]: json.loads(line)["reason"]
               for line in (run / "rejects.jsonl").read_text().splitlines()}
    assert rejects == {"corrupt.wav": "unreadable", "silent.wav": "silent", "short.wav": "too_short",
                       "gone.wav": "missing"}
    out = capsys.readouterr().out
    assert "rejected" in out and "unreadable" in out and "onset F1" in out
    evals = [json.loads(line)["metrics"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "eval/onset_f1" in json.loads(line).get("metrics", {})]
    assert len(evals) == 2 and all(0 <= e["eval/onset_f1"] <= 1 and e["eval/mel_distance"] > 0 for e in evals)
    # the exported weights load through tria.codec like any other weights file, with their own id
    codec = Codec.load(run / "codec.pth", quiet=True)
    assert codec.config_id == codec_id(run / "codec.pth") and codec.config_id.startswith("dac-file-")
    codes = codec.encode(torch.from_numpy(_clicks(0))[None, None], SR)
    assert codes.shape == (1, 9, SR // 512) and int(codes.max()) < 1024
    # --evaluate scores a weights file on held-out stems against random init, training nothing
    assert main([str(_config(corpus, "basic")), *ARCH, "data.eval_seconds=1.0", "--evaluate",
                 str(run / "codec.pth"), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "val (1 clips of 1 s), random init: onset F1" in out and "val (1 clips of 1 s), trained: onset F1" in out
    assert "mel distance trained/random init = " in out
    assert main([str(_config(corpus, "basic")), *ARCH, "--evaluate", str(corpus / "nothing.pth")]) == 2


@pytest.mark.slow
def test_resume_gives_identical_losses(corpus):
    assert main([str(_config(corpus, "full")), *ARCH]) == 0
    part = str(_config(corpus, "part"))
    assert main([part, *ARCH, "num_iters=3"]) == 0
    assert main([part, *ARCH, "--resume"]) == 0
    a, b = _losses(corpus / "runs" / "full"), _losses(corpus / "runs" / "part")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])


def test_all_stems_bad_is_a_clear_error(corpus, capsys):
    assert main([str(_config(corpus, "none")), *ARCH, "data.train_split=nothing"]) == 2
    assert "no 'nothing' stems" in capsys.readouterr().err


def test_bad_config_is_a_clear_error(corpus, capsys):
    assert main([str(_config(corpus, "badcfg")), "arch.decoder_dim=20"]) == 2
    assert "decoder_dim must divide by 16" in capsys.readouterr().err


def test_crops_are_a_function_of_seed_and_step_and_at_codec_level():
    stems = [torch.from_numpy(_clicks(i)) for i in range(3)]
    a = crop_batch(stems, 5, 0, 3, 8192, -60.0)
    assert torch.equal(a, crop_batch(stems, 5, 0, 3, 8192, -60.0))
    assert not torch.equal(a, crop_batch(stems, 6, 0, 3, 8192, -60.0))
    assert a.shape == (3, 1, 8192)
    assert torch.allclose(rms_db(a), torch.full((3,), -16.0), atol=1e-3)  # as tria.codec normalises


def test_mel_distance():
    x = _clicks(1)
    assert mel_distance(x, x, SR) == 0.0
    near, far = mel_distance(x, x + 1e-3 * np.random.default_rng(0).standard_normal(SR), SR), \
        mel_distance(x, _clicks(2), SR)
    assert 0 < near < far
    with pytest.raises(ValueError, match="at least"):
        mel_distance(x[:100], x[:100], SR)


def test_named_weights_load_by_name_and_by_codec_id(tmp_path, monkeypatch):
    import tria.codec as tc

    path = Codec.load("random", size="tiny", quiet=True).save(tmp_path / "named.pth")
    monkeypatch.setitem(tc.NAMED_WEIGHTS, "test-kit", path)
    cid = codec_id("test-kit")
    assert cid.startswith("dac-test-kit-") and cid != codec_id(path)
    codec = Codec.load("test-kit", quiet=True)
    assert codec.config_id == cid and "not the official DAC" in codec.description
    assert tc.codec_from_id(cid).config_id == cid  # a checkpoint's codec_id finds the shipped file, no path
    with pytest.raises(ValueError, match="another version"):
        tc.codec_from_id("dac-test-kit-0000000000")


def test_the_shipped_demo_codec_loads_by_name_and_reconstructs_drums_it_never_heard():
    """tria/weights/dac_demo_drums.pth: the file its README describes, and on loops of the procedural kit
    (not one of the Hydrogen kits it was trained on) it keeps the hits and beats random init clearly."""
    import hashlib

    from pipeline_fixtures import render_loop
    import tria.codec as tc

    path = tc.NAMED_WEIGHTS["demo-drums"]
    assert path.stat().st_size <= 10 * 2**20
    readme = (path.parent / "README.md").read_text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in readme, "README's sha256 is not the file's"
    codec = Codec.load("demo-drums", quiet=True)
    assert codec.config_id == codec_id("demo-drums") and codec.config_id.startswith("dac-demo-drums-")
    assert sum(p.numel() for p in codec.model.parameters()) == 2_045_882
    clips = [render_loop(6.0, seed=s).mean(axis=1) for s in range(2)]
    trained = ct.evaluate_codec(codec, clips)
    torch.manual_seed(0)
    random = ct.evaluate_codec(Codec(ct._build_dac(ct.CodecTrainConfig().arch.dac_kwargs()), "r", "r"), clips)
    assert trained["eval/onset_f1"] >= 0.9 > random["eval/onset_f1"]  # 0.97 vs 0.57 when written
    assert trained["eval/mel_distance"] < 0.75 * random["eval/mel_distance"]  # 3.58 vs 5.75
