"""The authors' released checkpoints through every public entry point: a state dict with exactly the
names and shapes of their tria_small (`/work/shared/fixtures/authors_tria_small_keys.json`, made
from their code), random values, loaded by `tria.checkpoint`, `python -m tria.generate`, the page's
loader (`tria.app`) and `tria.train` (`init_from=`); and fetching a release by name into a cache."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
import soundfile as sf
import torch

import shard_fixtures
import tria.generate as gen
from shard_fixtures import make_corpus, train_yaml
from synth_audio import click_track, hat, kick, place
from tria import checkpoint as ck
from tria.audio import save_audio
from tria.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint
from tria.codec import OFFICIAL_ID, Codec, CodecConfig
from tria.features import RhythmFeatureConfig
from tria.model import count_parameters

KEYS = Path("/work/shared/fixtures/authors_tria_small_keys.json")
SR = 44_100


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/tria/conftest.py


@pytest.fixture(scope="module")
def authors():
    if not KEYS.exists():
        pytest.skip(f"{KEYS} (the authors' tria_small names and shapes) is not on this machine")
    return json.loads(KEYS.read_text())["models"]["small_2b"]


@pytest.fixture(scope="module")
def model_pt(authors, tmp_path_factory):
    """Their `model.pt`: a plain state dict saved by torch.save, embedding and head tied (one tensor)."""
    gen_ = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=gen_) * 0.02 for name, shape, dtype in authors["state_dict"]}
    assert {dtype for _, _, dtype in authors["state_dict"]} == {"float32"}
    state["head.weight"] = state["tokens_emb.weight"]  # share_emb: the same Parameter in their module
    path = tmp_path_factory.mktemp("authors") / "model.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def dac_file(tmp_path_factory):
    """A DAC weights file in DAC's own layout (the tiny random codec, standing in for theirs)."""
    return Codec.load("random", size="tiny", quiet=True).save(tmp_path_factory.mktemp("dac") / "dac.pt")


def _their_config_as_ours(config: dict) -> dict:
    out = {("mlp_mult" if k == "mult" else k): v for k, v in config.items() if k not in ("pos_enc", "use_sdpa")}
    return out


def test_state_dict_loads_with_the_config_inferred_from_tensors(authors, model_pt):
    ckpt = load_checkpoint(model_pt)
    assert ckpt["origin"] == "authors-state-dict" and ckpt["codec_id"] == OFFICIAL_ID
    assert ckpt["features_id"] == RhythmFeatureConfig.release().config_id  # their app's feature_cfg
    expected = _their_config_as_ours(authors["config"])
    inferred = ckpt["model_config"]
    assert {k: expected[k] for k in inferred} == inferred
    model = build_model_from_checkpoint(ckpt)
    assert count_parameters(model) == authors["n_parameters"] == 43_051_008
    state = torch.load(model_pt, weights_only=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert set(model.state_dict()) == set(state)


def test_given_config_in_their_keys_and_contradictions(authors, model_pt):
    ckpt = load_checkpoint(model_pt, model_config=authors["config"], features="paper")
    assert ckpt["model_config"]["p_dropout"] == 0.2 and ckpt["model_config"]["mlp_mult"] == 4
    assert ckpt["features_id"] == RhythmFeatureConfig.paper().config_id
    with pytest.raises(CheckpointError, match="contradicts the tensors.*n_layers"):
        load_checkpoint(model_pt, model_config={**authors["config"], "n_layers": 6})
    with pytest.raises(CheckpointError, match="only 'rope'"):
        load_checkpoint(model_pt, model_config={**authors["config"], "pos_enc": "sinusoidal"})
    with pytest.raises(CheckpointError, match="3 bands"):
        load_checkpoint(model_pt, features=RhythmFeatureConfig.release(3).to_dict())


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompts")
    save_audio(d / "tap.wav", click_track([0.1, 0.35, 0.6, 0.85, 1.1], 1.4), SR)
    save_audio(d / "kit.wav", place([(0.0, kick()), (0.25, hat()), (0.5, kick())], 0.8), SR)
    return d


def test_generate_cli_takes_their_checkpoint_and_dac_file(model_pt, dac_file, prompts, capsys):
    out = prompts / "out.wav"
    argv = ["--rhythm", str(prompts / "tap.wav"), "--timbre", str(prompts / "kit.wav"), "--checkpoint", str(model_pt),
            "--codec-weights", str(dac_file), "--out", str(out), "--device", "cpu", "--iterations", "1",
            "--guidance-scale", "0", "--duration", "1.0"]
    assert gen.main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "C=512 L=12 F=2" in text and OFFICIAL_ID in text and str(dac_file) in text
    y, sr = sf.read(out)
    assert sr == SR and len(y) > 0


def test_app_loader_takes_their_checkpoint(model_pt, dac_file):
    from tria.app import build_parser

    args = build_parser().parse_args(["--checkpoint", str(model_pt), "--codec-weights", str(dac_file),
                                      "--device", "cpu", "--features", "release"])
    loaded = gen.load_for_generation(args.checkpoint, **gen.checkpoint_options(args))
    assert loaded.model.cfg.n_channels == 512 and loaded.model.cfg.share_emb
    assert loaded.features == RhythmFeatureConfig.release() and loaded.codec_id == OFFICIAL_ID
    state = torch.load(model_pt, weights_only=True)
    assert torch.equal(loaded.model.head.weight, state["head.weight"])


@pytest.mark.slow  # ~40 s on 2 shared cores: two trainers of the 43 M-parameter model
def test_train_init_from_their_checkpoint(model_pt, tmp_path, monkeypatch):
    from tria.train import Trainer, load_train_config, main

    # Shards tokenised with the codec their model uses (the official DAC), release features.
    monkeypatch.setattr(shard_fixtures, "CODEC", CodecConfig(weights="official"))
    make_corpus(tmp_path, {("train", "isolated"): 4, ("val", "isolated"): 2}, T=24)
    # The config asks for the paper features and a tiny model: the checkpoint's replace them.
    cfg_path = train_yaml(tmp_path, "ft", codec={"weights": "official"}, features={"preset": "paper"},
                          num_iters=1, val_every=1, ckpt_every=1, data={"batch_size": 2})
    cfg = load_train_config(str(cfg_path), [f"init_from={model_pt}"])
    trainer = Trainer(cfg)
    assert trainer.cfg.features == RhythmFeatureConfig.release()
    assert trainer.cfg.model_config().n_channels == 512 and trainer.cfg.model_config().p_dropout == 0.0
    state = torch.load(model_pt, weights_only=True)
    for name, tensor in trainer.state.model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    trainer.close()

    assert main([str(cfg_path), f"init_from={model_pt}", "name=ft2"]) == 0
    tuned = load_checkpoint(tmp_path / "runs" / "ft2" / "checkpoints" / "latest.pt")
    assert tuned["model_config"]["n_channels"] == 512 and tuned["train_state"]["step"] == 1
    assert tuned["features_id"] == RhythmFeatureConfig.release().config_id and tuned["codec_id"] == OFFICIAL_ID
    assert not torch.equal(tuned["model"]["in_proj.weight"], state["in_proj.weight"]), "one step was taken"

    # A run whose codec differs from the checkpoint's is refused with a clear error.
    tiny = train_yaml(tmp_path, "bad", codec={"size": "tiny"})
    assert main([str(tiny), f"init_from={model_pt}"]) == 2


class _Server:
    def __init__(self, root: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *args):
                outer.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_fetch_release_by_name_is_checked_and_cached(tmp_path, monkeypatch):
    from tria.model import tria_tiny

    served = tmp_path / "served"
    served.mkdir()
    torch.save(tria_tiny().state_dict(), tmp_path / "small.pt")  # the authors' names, a small model
    data = (tmp_path / "small.pt").read_bytes()
    (served / "model.pt").write_bytes(data)
    (served / "evil.pt").write_bytes(data[:-10] + b"0123456789")
    monkeypatch.setitem(ck.RELEASES, "test_release",
                        ck.Release("pretrained/tria/test/latest/model.pt", hashlib.sha256(data).hexdigest(), len(data)))
    server = _Server(served)
    try:
        with pytest.raises(CheckpointError, match="is not the release"):
            ck.fetch_release("test_release", cache=tmp_path / "cache", url=f"{server.url}/evil.pt", progress=False)
        assert not list((tmp_path / "cache").rglob("*.pt*")), "nothing bad is kept"
        first = ck.fetch_release("test_release", cache=tmp_path / "cache", url=f"{server.url}/model.pt", progress=False)
        assert first.read_bytes() == data and first.parent.name == "test_release"
        n = len(server.requests)
        again = ck.fetch_release("test_release", cache=tmp_path / "cache", url=f"{server.url}/model.pt")
        assert again == first and len(server.requests) == n, "a cached release is not downloaded again"
        # By name through the generic resolver, with the cache in $TRIA_CACHE.
        monkeypatch.setenv("TRIA_CACHE", str(tmp_path / "cache"))
        assert ck.resolve_checkpoint("test_release") == first
        assert load_checkpoint(ck.resolve_checkpoint("test_release"))["origin"] == "authors-state-dict"
    finally:
        server.close()
    with pytest.raises(CheckpointError, match="unknown release"):
        ck.fetch_release("no_such_model")
    with pytest.raises(CheckpointError, match="could not download"):
        ck.fetch_release("test_release", cache=tmp_path / "other", url="http://127.0.0.1:9/x", progress=False)


def test_release_table_names_the_authors_files():
    assert ck.RELEASE_URL.format(path="p").startswith("https://media.githubusercontent.com/media/interactiveaudiolab/tria/")
    for name, rel in ck.RELEASES.items():
        assert len(rel.sha256) == 64 and rel.size > 1_000_000 and rel.path.startswith("pretrained/")
