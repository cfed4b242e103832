"""tria.evaluate: set parsing, sweeps, prompt sets, and one full run over a tiny checkpoint.

The full run goes through the CLI with a sqlite MLflow store and a DuckDB catalogue in tmp_path:
2 rhythm prompts (folder) x 2 test-split excerpts (catalogue), 2 pairs, a 2-condition sweep.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from synth_audio import SR, click_track, hat, place, sine_kick
from tria.audio import load_audio, save_audio
from tria.checkpoint import save_checkpoint
from tria.config import ConfigError
from tria.evaluate import (
    AudioSetConfig,
    apply_condition,
    condition_slug,
    load_clips,
    load_eval_set,
    main,
    make_pairs,
    parse_sweep,
    seed_runs,
    training_run_id,
)
from tria.features import RhythmFeatureConfig
from tria.model import tria_tiny


# ----------------------------------------------------------------------------------------------
# fixtures


def drum_stem(seconds: float) -> np.ndarray:
    """Kick on beats, hats on off-beats, 120 bpm."""
    events = []
    for i, t in enumerate(np.arange(0.0, seconds - 0.3, 0.25)):
        events.append((t, sine_kick() if i % 2 == 0 else hat(seed=i)))
    return place(events, seconds)


def make_catalogue(tmp_path: Path) -> tuple[Path, Path]:
    """A catalogue with one test-split drum stem (two excerpts) and one train-split stem (one excerpt)."""
    from pipelines.catalogue import Catalogue, ExcerptRow, StemRow

    stems = []
    for split, track in (("test", "song_a"), ("train", "song_b")):
        path = save_audio(tmp_path / "stems" / f"{track}.wav", drum_stem(4.0), SR)
        stems.append(StemRow(source="synth", track=track, stem="drums", role="drums", tier="isolated",
                             split=split, licence="CC0", path=str(path), sample_rate=SR, n_channels=1,
                             n_samples=4 * SR))
    excerpts = [ExcerptRow("synth", "song_a", "drums", 0.5, 1.2, -20.0),
                ExcerptRow("synth", "song_a", "drums", 2.0, 1.2, -20.0),
                ExcerptRow("synth", "song_b", "drums", 0.0, 1.2, -20.0)]
    db = tmp_path / "catalogue.duckdb"
    with Catalogue(db) as cat:
        cat.upsert(stems)
        cat.upsert(excerpts)
    return db, Path(stems[0].path)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    model = tria_tiny()
    feats = RhythmFeatureConfig.release()
    return save_checkpoint(tmp_path / "ckpt" / "tiny.pt", model.cfg, model, codec_id="dac-random-tiny-s0",
                           features=feats.to_dict(), features_id=feats.config_id)


# ----------------------------------------------------------------------------------------------
# unit tests


class TestSetAndSweep:
    def test_sweep_cross_product(self):
        conds = parse_sweep(["guidance_scale=0,1,2", "iterations=4,8"])
        assert len(conds) == 6
        assert conds[0] == {"sampler.guidance_scale": 0, "sampler.iterations": 4}
        assert conds[-1] == {"sampler.guidance_scale": 2, "sampler.iterations": 8}
        assert parse_sweep([]) == [{}]

    def test_sweep_values_are_yaml_and_may_be_lists(self):
        conds = parse_sweep(["top_p=0.85,null", "sampler.iterations=[8, 4, 4, 2, 2, 2, 2, 2, 2],8"])
        assert [c["sampler.top_p"] for c in conds] == [0.85, 0.85, None, None]
        assert conds[0]["sampler.iterations"] == [8, 4, 4, 2, 2, 2, 2, 2, 2]
        assert conds[1]["sampler.iterations"] == 8

    @pytest.mark.parametrize("bad, match", [("guidance_scale", "key=v1"), ("temp=1,2 temp=3", "twice"),
                                            ("rhythm.folder=a,b", "cannot sweep")])
    def test_sweep_errors(self, bad, match):
        with pytest.raises(ValueError, match=match):
            parse_sweep(bad.split(" "))

    def test_condition_applies_to_the_sampler(self, tmp_path):
        cfg = load_eval_set(None, [f"rhythm={{folder: {tmp_path}}}", f"timbre={{folder: {tmp_path}}}",
                                   "sampler={preset: app}"])
        assert cfg.sampler.guidance_scale == 2.0 and cfg.sampler.top_p is None
        new = apply_condition(cfg, {"sampler.guidance_scale": 0, "sampler.iterations": 4})
        assert (new.sampler.guidance_scale, new.sampler.iterations, new.sampler.top_p) == (0, 4, None)
        assert condition_slug({"sampler.guidance_scale": 0.5, "sampler.iterations": 4}) == \
            "guidance_scale-0.5_iterations-4"

    def test_set_validation(self, tmp_path):
        timbre = f"timbre={{folder: {tmp_path}}}"
        with pytest.raises(ConfigError, match="rhythm"):
            load_eval_set(None, [f"timbre={{folder: {tmp_path}}}"])
        with pytest.raises(ConfigError, match="exactly one"):
            load_eval_set(None, [f"rhythm={{folder: {tmp_path}, split: test}}", timbre])
        with pytest.raises(ConfigError, match="unknown config key"):
            load_eval_set(None, [f"rhythm={{folder: {tmp_path}}}", timbre, "pairs=3"])

    def test_shipped_sets_parse(self):
        for path in sorted((Path(__file__).resolve().parents[2] / "conf" / "eval").glob("*.yaml")):
            if path.name != "paper_base.yaml":  # a fragment, included by the paper sets
                assert load_eval_set(path).name == path.stem

    def test_pairs(self):
        assert make_pairs(2, 3) == [(r, t) for r in range(2) for t in range(3)]
        some = make_pairs(5, 4, max_pairs=6, seed=3)
        assert len(set(some)) == 6 and some == make_pairs(5, 4, max_pairs=6, seed=3) and some == sorted(some)


class TestPromptSets:
    def test_catalogue_reads_only_the_split_at_the_offsets(self, tmp_path):
        db, stem_path = make_catalogue(tmp_path)
        clips = load_clips(AudioSetConfig(split="test"), str(db), "timbre")
        assert len(clips) == 2 and all(c.split == "test" for c in clips)
        stem, _ = load_audio(stem_path, SR)
        starts = {int(round(0.5 * SR)), int(round(2.0 * SR))}
        for c in clips:
            assert len(c.audio) == int(1.2 * SR)
            matched = [s for s in starts if np.allclose(stem[0, s : s + len(c.audio)], c.audio, atol=1e-6)]
            assert len(matched) == 1  # each clip is the stem at one of the excerpt offsets
        assert len(load_clips(AudioSetConfig(split="test", per_track=1), str(db), "timbre")) == 1
        with pytest.raises(ValueError, match="empty"):
            load_clips(AudioSetConfig(split="test", sources=("musdb18hq",)), str(db), "timbre")

    def test_folder_with_annotations_and_resampling(self, tmp_path):
        save_audio(tmp_path / "p" / "b.wav", click_track([0.1, 0.5], 1.0, sr=22_050), 22_050)
        save_audio(tmp_path / "p" / "a.flac", click_track([0.2], 1.0), SR)
        (tmp_path / "p" / "b.csv").write_text("time,label\n0.1,kd\n0.5,sd\n")
        (tmp_path / "p" / "a.csv").write_text("0.2\n")
        clips = load_clips(AudioSetConfig(folder=str(tmp_path / "p"), annotations=".csv", max_seconds=0.5),
                           None, "rhythm")
        assert [c.name for c in clips] == ["a.flac", "b.wav"]
        assert len(clips[1].audio) == SR // 2  # 0.5 s, resampled to 44.1 kHz
        np.testing.assert_allclose(clips[1].onsets, [0.1, 0.5])

    def test_seed_runs_batch_consecutive_seeds(self):
        assert seed_runs([0, 1, 2, 5, 6, 9]) == [(0, 3), (5, 2), (9, 1)]
        assert seed_runs([3]) == [(3, 1)]


class TestCheckpoints:
    def save(self, path: Path, codec_id: str = "dac-random-tiny-s0", train_state=None) -> Path:
        model, feats = tria_tiny(), RhythmFeatureConfig.release()
        return save_checkpoint(path, model.cfg, model, codec_id=codec_id, features=feats.to_dict(),
                               features_id=feats.config_id, train_state=train_state)

    def test_training_run_id(self, tmp_path):
        assert training_run_id(self.save(tmp_path / "a.pt", train_state={"mlflow_run_id": "abc"})) == "abc"
        named = self.save(tmp_path / "b.pt", train_state={"config": json.dumps({"name": "paper_2b"})})
        assert training_run_id(named) == "local-paper_2b"
        assert training_run_id(self.save(tmp_path / "c.pt")) == "unknown"

    def test_codec_file_id_needs_weights(self, tmp_path, capsys):
        ckpt = self.save(tmp_path / "file_codec.pt", codec_id="dac-file-0123456789")
        save_audio(tmp_path / "r" / "taps.wav", click_track([0.1, 0.4], 0.8), SR)
        save_audio(tmp_path / "t" / "kit.wav", drum_stem(1.0), SR)
        sets = {"rhythm": {"folder": str(tmp_path / "r")}, "timbre": {"folder": str(tmp_path / "t")}}
        (tmp_path / "set.yaml").write_text(yaml.safe_dump(sets))
        argv = ["--checkpoint", str(ckpt), "--set", str(tmp_path / "set.yaml"), "--out", str(tmp_path / "o")]
        assert main(argv) == 2
        assert "--codec-weights" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# a full run


def test_cli_run_writes_tables_mlflow_and_catalogue(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from pipelines.catalogue import Catalogue, EvalRunRow

    monkeypatch.chdir(tmp_path)  # MLflow's sqlite store puts run artifacts under ./mlruns
    db, _ = make_catalogue(tmp_path)
    for name, times in (("taps.wav", [0.1, 0.3, 0.45, 0.6]), ("claps.wav", [0.05, 0.25, 0.5])):
        save_audio(tmp_path / "rhythm" / name, click_track(times, 0.7), SR)
    set_yaml = tmp_path / "tiny_set.yaml"
    set_yaml.write_text(yaml.safe_dump({
        "name": "tiny", "catalogue": str(db),
        "rhythm": {"folder": str(tmp_path / "rhythm")}, "timbre": {"split": "test"},
        "max_duration_s": 1.2, "timbre_s": 0.4, "seeds": [0],
        "sampler": {"iterations": 1, "guidance_scale": 0, "causal_bias": 0},
        "n_bootstrap": 50, "fd_bootstrap": 5, "n_audio_examples": 1,
    }))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["--set", str(set_yaml), "--out", str(tmp_path / "out"), "--device", "cpu", "--mlflow-uri", uri,
               "--mlflow-experiment", "eval-test", "--checkpoint", str(tiny_checkpoint), "max_pairs=2",
               "--sweep", "guidance_scale=0,1.5"])  # the override right after --checkpoint still applies
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "out"

    with open(out / "pairs.csv") as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == 4  # 2 conditions x 2 pairs x 1 seed
    assert [p["guidance_scale"] for p in pairs] == ["0", "0", "1.5", "1.5"]
    assert {p["rhythm"] for p in pairs} <= {"taps.wav", "claps.wav"}
    test_ids = {c.name for c in load_clips(AudioSetConfig(split="test"), str(db), "timbre")}
    assert {p["timbre"] for p in pairs} <= test_ids
    for p in pairs:
        assert 0.0 <= float(p["onset_f1"]) <= 1.0 and p["n_onsets_prompt"] in ("3", "4")
        assert {"rhythm_corr", "rhythm_corr_b0", "rhythm_corr_b1"} <= set(p)  # the model has 2 bands
        assert -1.0 <= float(p["timbre_cosine"]) <= 1.0

    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [s["guidance_scale"] for s in summary] == ["0", "1.5"]
    for s, cond in zip(summary, ("0", "1.5")):
        f1s = [float(p["onset_f1"]) for p in pairs if p["guidance_scale"] == cond]
        assert float(s["onset_f1"]) == pytest.approx(np.mean(f1s), abs=1e-6)
        assert float(s["onset_f1_ci_low"]) <= float(s["onset_f1"]) <= float(s["onset_f1_ci_high"])
        assert s["n_outputs"] == "2" and float(s["fd"]) >= 0.0
    md = (out / "results.md").read_text()
    assert "| guidance_scale |" in md and "## Per output" in md
    results = json.loads((out / "results.json").read_text())
    assert results["sweep"] == ["guidance_scale=0,1.5"] and len(results["pairs"]) == 4
    example = out / "examples" / "guidance_scale-1.5" / "pair000_seed0_output.wav"
    audio, sr = load_audio(example)
    assert sr == SR and audio.shape[1] == (int(0.7 * SR) // 512) * 512

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("eval-test")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2
    by_cond = {r.data.params["set.sampler.guidance_scale"]: r for r in runs}
    assert set(by_cond) == {"0", "1.5"}
    for s in summary:
        run = by_cond[s["guidance_scale"]]
        assert run.data.metrics["eval/onset_f1"] == pytest.approx(float(s["onset_f1"]), abs=1e-6)
        assert run.data.metrics["eval/fd"] == pytest.approx(float(s["fd"]), rel=1e-5)
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"summary.csv", "pairs.csv", "results.md"} <= names
        folder = next(n for n in names if n.startswith("guidance_scale-"))
        wavs = {a.path for a in client.list_artifacts(run.info.run_id, folder)}
        assert any(w.endswith("_output.wav") for w in wavs) and any(w.endswith("_rhythm.wav") for w in wavs)

    with Catalogue(db, read_only=True) as cat:
        rows = cat.rows(EvalRunRow)
    assert len(rows) == 2 and {r.split for r in rows} == {"test"}
    assert {r.checkpoint for r in rows} == {str(tiny_checkpoint.resolve())}
    for s in summary:
        row = next(r for r in rows if json.loads(r.config_json)["condition"]["sampler.guidance_scale"]
                   == float(s["guidance_scale"]))
        assert json.loads(row.metrics_json)["onset_f1"] == pytest.approx(float(s["onset_f1"]), abs=1e-6)


def test_cli_reports_bad_input(tmp_path, capsys):
    set_yaml = tmp_path / "s.yaml"
    set_yaml.write_text("name: x\nrhythm: {folder: /nonexistent}\ntimbre: {folder: /nonexistent}\n")
    argv = ["--checkpoint", str(tmp_path / "none.pt"), "--set", str(set_yaml), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "folder not found" in capsys.readouterr().err


def test_several_checkpoints_share_one_table(tmp_path):
    """1-band and 2-band checkpoints in one run: a checkpoint column and the union of band columns."""
    from tria.evaluate import checkpoint_labels, run_evaluation

    paths = []
    for n_bands in (1, 2):
        model, feats = tria_tiny(n_feats=n_bands), RhythmFeatureConfig.release(n_bands=n_bands)
        paths.append(save_checkpoint(tmp_path / f"runs/b{n_bands}/checkpoints/best.pt", model.cfg, model,
                                     codec_id="dac-random-tiny-s0", features=feats.to_dict(),
                                     features_id=feats.config_id))
    assert checkpoint_labels(paths) == ["b1/best", "b2/best"]
    save_audio(tmp_path / "r" / "taps.wav", click_track([0.1, 0.3, 0.5], 0.6), SR)
    save_audio(tmp_path / "r" / "blip.wav", click_track([0.05], 0.3), SR)  # too short: skipped, not fatal
    save_audio(tmp_path / "t" / "kit.wav", drum_stem(1.5), SR)
    cfg = load_eval_set(None, [f"rhythm={{folder: {tmp_path / 'r'}}}", f"timbre={{folder: {tmp_path / 't'}}}",
                               "timbre_s=0.3", "max_duration_s=1.0", "n_audio_examples=0",
                               "sampler={iterations: 1, guidance_scale: 0, causal_bias: 0}"])
    result = run_evaluation(cfg, paths, tmp_path / "out", device="cpu")
    assert [r["checkpoint"] for r in result.summary] == ["b1/best", "b2/best"]
    assert [p["rhythm"] for p in result.pairs] == ["taps.wav", "taps.wav"]
    assert "rhythm_corr_b1" not in result.pairs[0] and "rhythm_corr_b1" in result.pairs[1]
    header = (tmp_path / "out" / "pairs.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "checkpoint" and {"rhythm_corr_b0", "rhythm_corr_b1"} <= set(header)
    assert not (tmp_path / "out" / "examples").exists()
    assert result.eval_ids == [] and result.mlflow_run_ids == []  # no catalogue, no MLflow named
