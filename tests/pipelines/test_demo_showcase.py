"""The showcase's rhythm-adherence scores: own prompt vs a control prompt."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.demo.showcase import print_scores, rhythm_scores

SR = 44_100


def _clicks(times, seconds=4.0):
    x = np.zeros(int(SR * seconds), np.float32)
    rng = np.random.default_rng(0)
    for t in times:
        i = int(t * SR)
        x[i:i + 1500] += rng.standard_normal(1500).astype(np.float32) * np.exp(-np.arange(1500) / 200) * 0.5
    return x


def test_an_output_that_follows_its_prompt_beats_the_control(capsys):
    a = _clicks([0.2, 0.7, 1.2, 1.7, 2.2, 2.7, 3.2])
    b = _clicks([0.45, 1.35, 1.6, 2.45, 3.05, 3.6])
    outputs = [{"name": "a_out", "gesture": "a", "prompt": a, "audio": a.copy()},
               {"name": "b_out", "gesture": "b", "prompt": b, "audio": b[: SR * 3].copy()}]
    rows = rhythm_scores(outputs)
    assert [r["control_prompt"] for r in rows] == ["b", "a"]
    assert all(r["own_prompt_f1"] == 1.0 for r in rows)  # the prompt is cut to the output's length
    assert all(r["control_f1"] < 0.5 for r in rows)
    print_scores(rows)
    out = capsys.readouterr().out
    assert "a_out" in out and "own 1.000" in out and "mean: own 1.000" in out


def test_the_control_needs_two_prompts():
    a = _clicks([0.5, 1.5])
    with pytest.raises(ValueError, match="two different"):
        rhythm_scores([{"name": "x", "gesture": "a", "prompt": a, "audio": a}])
