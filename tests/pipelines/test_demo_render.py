"""Rendering note events with a kit: onsets where the pattern says, the right velocity layer,
pan, choke, pitch; and the procedural and gesture kits that share the renderer."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pipelines.demo import gestures, kits, render, synth
from pipelines.demo.grooves import NoteEvent, generate_groove

SR = 44100
SOFT_HZ, HARD_HZ, HAT_HZ = 200.0, 2000.0, 6000.0

FIXTURE_KIT = """<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit">
 <name>Fixture</name><license>CC0</license>
 <instrumentList>
  <instrument><id>0</id><name>Kick</name><pan>-0.5</pan>
   <instrumentComponent>
    <layer><filename>soft.wav</filename><min>0</min><max>0.5</max></layer>
    <layer><filename>hard.wav</filename><min>0.5</min><max>1</max></layer>
   </instrumentComponent></instrument>
  <instrument><id>1</id><name>Hat Open</name><muteGroup>1</muteGroup>
   <layer><filename>open.wav</filename><min>0</min><max>1</max></layer></instrument>
  <instrument><id>2</id><name>Hat Closed</name><muteGroup>1</muteGroup>
   <layer><filename>closed.wav</filename><min>0</min><max>1</max><pitch>12</pitch></layer></instrument>
 </instrumentList>
</drumkit_info>
"""


def _burst(hz: float, seconds: float, decay_s: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t) * np.exp(-t / decay_s)).astype(np.float32)


@pytest.fixture
def fixture_kit(tmp_path) -> kits.Kit:
    (tmp_path / "drumkit.xml").write_text(FIXTURE_KIT)
    sf.write(str(tmp_path / "soft.wav"), _burst(SOFT_HZ, 0.08, 0.015), SR)
    sf.write(str(tmp_path / "hard.wav"), _burst(HARD_HZ, 0.08, 0.015), SR)
    sf.write(str(tmp_path / "open.wav"), _burst(HAT_HZ, 1.0, 0.5), SR)
    sf.write(str(tmp_path / "closed.wav"), _burst(HAT_HZ / 2, 0.03, 0.005), SR)  # pitched up an octave
    return kits.parse_drumkit_xml(tmp_path / "drumkit.xml")


def detect_onsets(mono: np.ndarray, rel_threshold: float = 0.05, refractory_s: float = 0.1) -> np.ndarray:
    """Onset times (s): rising crossings of a threshold on the rectified signal."""
    env = np.abs(mono)
    above = env > rel_threshold * env.max()
    onsets, last = [], -np.inf
    for i in np.flatnonzero(above[1:] & ~above[:-1]) + 1:
        if (i - last) / SR > refractory_s:
            onsets.append(i / SR)
            last = i
    return np.array(onsets)


def dominant_hz(mono: np.ndarray, start_s: float, seconds: float = 0.03) -> float:
    seg = mono[int(start_s * SR) : int((start_s + seconds) * SR)]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n=8192))
    return float(np.fft.rfftfreq(8192, 1 / SR)[spec.argmax()])


def test_onsets_and_velocity_layers(fixture_kit):
    times = [0.0, 0.35, 0.8, 1.2, 1.75]
    vels = [0.9, 0.3, 0.6, 0.2, 1.0]
    events = [NoteEvent(t, "kick", v) for t, v in zip(times, vels)]
    loop = render.render_events(events, fixture_kit, 2.0, seed=0)
    assert loop.audio.shape == (2, 2 * SR) and loop.audio.dtype == np.float32
    assert np.abs(loop.audio).max() == pytest.approx(0.89, abs=1e-4)
    assert (loop.kit, loop.licence, loop.tier) == ("Fixture", "CC0", "synthetic")
    mono = loop.audio.mean(axis=0)
    found = detect_onsets(mono)
    assert len(found) == len(times)
    assert np.max(np.abs(found - np.array(times))) < 0.003  # within 3 ms of the pattern
    for t, v in zip(times, vels):
        expected = HARD_HZ if v >= 0.5 else SOFT_HZ
        assert dominant_hz(mono, t) == pytest.approx(expected, rel=0.05), (t, v)

    # Louder velocity, louder hit: the 1.0 hit peaks above the 0.6 one (same layer).
    def peak(t: float) -> float:
        return float(np.abs(mono[int(t * SR) : int((t + 0.03) * SR)]).max())

    assert peak(1.75) > peak(0.8) * 1.4


def test_pan_ratio_law(fixture_kit):
    loop = render.render_events([NoteEvent(0.1, "kick", 0.9)], fixture_kit, 0.5,
                                config=render.RenderConfig(reverb_mix=0.0))  # fmt: skip
    left, right = np.abs(loop.audio).max(axis=1)
    assert right / left == pytest.approx(0.5, rel=1e-3)  # pan -0.5: right channel at 1 - 0.5
    assert render.pan_gains(1.0) == (0.0, 1.0) and render.pan_gains(0.0) == (1.0, 1.0)


def test_closed_hat_chokes_open_hat_and_pitch(fixture_kit):
    dry = render.RenderConfig(reverb_mix=0.0)
    open_only = [NoteEvent(0.1, "hat_open", 0.8)]
    choked = open_only + [NoteEvent(0.5, "hat_closed", 0.8)]
    ringing = render.render_events(open_only, fixture_kit, 1.0, config=dry).audio[0]
    cut = render.render_events(choked, fixture_kit, 1.0, config=dry).audio[0]
    after = slice(int(0.6 * SR), int(0.9 * SR))  # after the short closed hat has died away
    assert np.abs(ringing[after]).max() > 0.2
    assert np.abs(cut[after]).max() < 1e-3
    # The closed hat's layer has pitch +12: its 3 kHz sample sounds at 6 kHz.
    assert dominant_hz(cut, 0.5, 0.02) == pytest.approx(HAT_HZ, rel=0.03)


def test_room_is_seeded_and_wet_mix_matters(fixture_kit):
    events = [NoteEvent(0.0, "kick", 0.9)]
    a = render.render_events(events, fixture_kit, 1.0, seed=3).audio
    b = render.render_events(events, fixture_kit, 1.0, seed=3).audio
    dry = render.render_events(events, fixture_kit, 1.0, config=render.RenderConfig(reverb_mix=0.0)).audio
    assert np.array_equal(a, b)
    tail = slice(int(0.2 * SR), int(0.3 * SR))  # the 80 ms sample is over: only the room remains
    assert np.abs(dry[:, tail]).max() == 0.0 and np.abs(a[:, tail]).max() > 1e-4
    with pytest.raises(ValueError, match="reverb_mix"):
        render.RenderConfig(reverb_mix=1.5)
    with pytest.raises(ValueError, match="seconds must be > 0"):
        render.render_events(events, fixture_kit, 0.0)


def test_procedural_kit_layers_get_brighter_and_are_deterministic():
    kit = synth.procedural_kit("acoustic", seed=1)
    again = synth.procedural_kit.__wrapped__("acoustic", seed=1)  # bypass the cache: re-synthesise
    assert kit.licence == "CC0 (procedural)" and kit.can_play_grooves
    for a, b in zip(kit.instruments, again.instruments):
        assert all(np.array_equal(x.audio, y.audio) for x, y in zip(a.layers, b.layers))
    snare = kit.with_role("snare")[0]
    assert [lay.max_velocity for lay in snare.layers] == pytest.approx([1 / 3, 2 / 3, 1.0])
    centroids = [_centroid(lay.audio) for lay in snare.layers]
    assert centroids[0] < centroids[1] < centroids[2]  # harder hits are brighter
    assert (
        _centroid(kit.with_role("kick")[0].layers[-1].audio)
        < 300
        < _centroid(kit.with_role("hat_closed")[0].layers[0].audio)
    )
    with pytest.raises(ValueError, match="unknown voicing"):
        synth.procedural_kit("jazz")


def _centroid(audio: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(audio.mean(axis=0))) ** 2
    return float((power * np.fft.rfftfreq(audio.shape[-1], 1 / SR)).sum() / power.sum())


@pytest.mark.parametrize("style", gestures.STYLES)
def test_gesture_kits_map_low_drums_to_low_sounds(style):
    kit = gestures.gesture_kit(style)
    low = _centroid(kit.with_role("kick")[0].layers[-1].audio)
    mid = _centroid(kit.with_role("snare")[0].layers[-1].audio)
    high = _centroid(kit.with_role("hat_closed")[0].layers[-1].audio)
    assert low < mid < high


def test_render_gesture_keeps_the_groove_rhythm():
    groove = generate_groove("rock", 2.0, seed=5, bpm=120, humanize_ms=0.0)
    prompt = gestures.render_gesture(groove, "tapping", seed=0)
    assert prompt.audio.shape == (2, 2 * SR) and prompt.licence == "CC0 (procedural)"
    mono = prompt.audio.mean(axis=0)
    kicks = [e.time_s for e in groove.events if e.role == "kick"]
    found = detect_onsets(mono, rel_threshold=0.05, refractory_s=0.05)
    for t in kicks:  # every kick of the groove starts a sound in the gesture
        assert np.min(np.abs(found - t)) < 0.005
    with pytest.raises(ValueError, match="unknown gesture style"):
        gestures.gesture_kit("whistling")
