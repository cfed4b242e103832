"""Audio I/O: good files load, every broken file raises AudioError with a reason."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tria.audio import AudioError, load_audio, save_audio


def test_round_trip_and_resample(tmp_path, rng):
    y = (rng.standard_normal((2, 22_050)) * 0.1).astype(np.float32)
    p = save_audio(tmp_path / "a.wav", y, 22_050)
    x, sr = load_audio(p, mono=False)
    assert sr == 22_050 and x.shape == (2, 22_050) and np.allclose(x, y, atol=1e-4)
    m, sr = load_audio(p, sample_rate=44_100)
    assert sr == 44_100 and m.shape == (1, 44_100)
    part, _ = load_audio(p, mono=False, offset_s=0.5, duration_s=0.25)
    assert part.shape == (2, 5512) and np.allclose(part, y[:, 11025:11025 + 5512], atol=1e-4)


@pytest.mark.parametrize("kind,reason", [
    ("missing", "missing"), ("garbage", "unreadable"), ("truncated", "unreadable"),
    ("zero_length", "unreadable"), ("empty_wav", "empty"), ("nan", "non_finite"),
])
def test_bad_files(tmp_path, kind, reason):
    p = tmp_path / f"{kind}.wav"
    if kind == "garbage":
        p.write_bytes(b"RIFF????WAVEjunkjunkjunk")
    elif kind == "truncated":
        sf.write(p, np.zeros(1000, dtype=np.float32), 44_100)
        p.write_bytes(p.read_bytes()[:30])
    elif kind == "zero_length":
        p.write_bytes(b"")
    elif kind == "empty_wav":
        sf.write(p, np.zeros((0, 1), dtype=np.float32), 44_100)
    elif kind == "nan":
        sf.write(p, np.full(1000, np.nan, dtype=np.float32), 44_100, subtype="FLOAT")
    with pytest.raises(AudioError) as e:
        load_audio(p)
    assert e.value.reason == reason
    assert isinstance(e.value, ValueError)
