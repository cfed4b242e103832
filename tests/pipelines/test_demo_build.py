"""build_demo_corpus on the procedural path: deterministic, cached, honest about its kits."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from pipelines.demo import build, debs

TINY = {"n_loops": 2, "seconds_per_loop": 2.0, "n_gestures": 1}


def _digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.wav"))}  # fmt: skip


def test_procedural_build_is_deterministic_and_cached(tmp_path, monkeypatch, capsys):
    a = build.build_demo_corpus(tmp_path / "a", seed=7, use_apt=False, **TINY)
    assert "PROCEDURAL kits (use_apt=False)" in capsys.readouterr().out
    b = build.build_demo_corpus(tmp_path / "b", seed=7, use_apt=False, **TINY)
    assert a["items"] == b["items"] and a["source"] == "procedural"
    digests = _digests(tmp_path / "a")
    assert digests == _digests(tmp_path / "b") and len(digests) == 3  # byte-identical wavs

    loops = [i for i in a["items"] if i["kind"] == "loop"]
    (gesture,) = [i for i in a["items"] if i["kind"] == "gesture"]
    assert len(loops) == 2 and gesture["groove_of"] == loops[0]["path"]
    for item in a["items"]:
        assert item["tier"] == "synthetic" and item["licence"] == "CC0 (procedural)"
        assert item["duration"] == 2.0 and item["sample_rate"] == 44100
        info = sf.info(str(tmp_path / "a" / item["path"]))
        assert (info.samplerate, info.channels, info.frames) == (44100, 2, 88200)
    assert all(i["path"].startswith("loops/procedural-") for i in loops)
    assert a["total_seconds"] == 6.0

    # Second call: nothing is rendered (rendering would raise) and files are untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*")}
    monkeypatch.setattr(build, "render_events", lambda *a, **k: pytest.fail("re-rendered a cached corpus"))
    monkeypatch.setattr(build, "resolve_kits", lambda *a, **k: pytest.fail("looked for kits again"))
    again = build.build_demo_corpus(tmp_path / "a", seed=7, use_apt=False, **TINY)
    assert again == json.loads((tmp_path / "a" / "manifest.json").read_text()) == a
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*")} == mtimes


def test_other_seed_rebuilds_and_removes_stale_files(tmp_path):
    first = build.build_demo_corpus(
        tmp_path, seed=1, use_apt=False, n_loops=1, seconds_per_loop=1.0, n_gestures=0
    )
    second = build.build_demo_corpus(
        tmp_path, seed=2, use_apt=False, n_loops=1, seconds_per_loop=1.0, n_gestures=0
    )
    assert second["config"]["seed"] == 2
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.wav")}
    assert on_disk == {i["path"] for i in second["items"]}
    if first["items"][0]["path"] != second["items"][0]["path"]:
        assert not (tmp_path / first["items"][0]["path"]).exists()


def test_falls_back_to_procedural_when_apt_fails(tmp_path, monkeypatch, capsys):
    def no_apt(cache_dir, packages=debs.HYDROGEN_PACKAGES):
        raise debs.DebError("apt-get is not available on this machine")

    monkeypatch.setattr(debs, "fetch_hydrogen", no_apt)
    manifest = build.build_demo_corpus(tmp_path, use_apt=True, cache_dir=tmp_path / "cache",
                                       n_loops=1, seconds_per_loop=1.0, n_gestures=0)  # fmt: skip
    assert manifest["source"] == "procedural" and manifest["config"]["use_apt"] is True
    assert "PROCEDURAL kits (fallback" in capsys.readouterr().out


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_loops >= 1"):
        build.build_demo_corpus(tmp_path, n_loops=0, use_apt=False)
    with pytest.raises(ValueError, match="seconds_per_loop > 0"):
        build.build_demo_corpus(tmp_path, seconds_per_loop=-1, use_apt=False)


def test_kit_slug():
    assert build.kit_slug("The Black Pearl 1.0") == "The_Black_Pearl_1.0"
    assert build.kit_slug("circAfrique v4") == "circAfrique_v4"
    assert build.kit_slug("../..") == "kit"


def _tiny_hydrogen_tree(root) -> debs.HydrogenTree:
    """The unpacked-package layout with one real-format kit, one song and a DEP-5 copyright."""
    data = root / "usr/share/hydrogen/data"
    kit = data / "drumkits" / "Tiny Kit"
    kit.mkdir(parents=True)
    t = np.arange(2205) / 44100
    for name, hz in (("kick.wav", 60), ("snare.wav", 250), ("hat.wav", 7000)):
        sf.write(
            str(kit / name), (0.5 * np.sin(2 * np.pi * hz * t) * np.exp(-t / 0.02)).astype(np.float32), 44100
        )
    layers = "".join(
        f"<instrument><id>{i}</id><name>{n}</name><layer><filename>{f}</filename><min>0</min><max>1</max>"
        f"</layer></instrument>"
        for i, (n, f) in enumerate((("Kick", "kick.wav"), ("Snare", "snare.wav"), ("Hat Closed", "hat.wav")))
    )
    (kit / "drumkit.xml").write_text(
        f"<drumkit_info><name>Tiny Kit</name><license>GPL</license><instrumentList>{layers}"
        "</instrumentList></drumkit_info>"
    )
    songs = data / "demo_songs"
    songs.mkdir()
    (songs / "tiny.h2song").write_text(
        "<song><bpm>120</bpm><name>Tiny Song</name><instrumentList>"
        "<instrument><id>0</id><name>Kick</name><drumkit>Tiny Kit</drumkit></instrument></instrumentList>"
        "<patternList><pattern><name>A</name><size>192</size><noteList>"
        "<note><position>0</position><velocity>0.9</velocity><instrument>0</instrument></note>"
        "</noteList></pattern></patternList></song>"
    )
    doc = root / "usr/share/doc/hydrogen-drumkits"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Files: drumkits/Tiny?Kit.h2drumkit\nCopyright: me\nLicense: GPL-2+\n")
    return debs.HydrogenTree(root, data, 0.0)


def test_hydrogen_branch_uses_real_kits_songs_and_debian_licence(tmp_path, monkeypatch, capsys):
    tree = _tiny_hydrogen_tree(tmp_path / "tree")
    monkeypatch.setattr(debs, "fetch_hydrogen", lambda cache_dir, packages=debs.HYDROGEN_PACKAGES: tree)
    manifest = build.build_demo_corpus(
        tmp_path / "out", n_loops=2, seconds_per_loop=1.0, n_gestures=0, cache_dir=tmp_path / "c"
    )
    assert manifest["source"] == "hydrogen" and "real Hydrogen kits" in capsys.readouterr().out
    assert [k["name"] for k in manifest["kits"]] == ["Tiny Kit"]
    first, second = manifest["items"]
    assert first["genre"] == "h2song:Tiny Song"  # a kit's first loop plays its own demo song
    assert first["path"].startswith("loops/Tiny_Kit/000_song-Tiny_Song_120bpm")
    assert {i["licence"] for i in manifest["items"]} == {"GPL-2+"}  # Debian's entry wins
    assert second["genre"] in {"rock", "funk", "hiphop", "house", "halftime", "shuffle", "h2song:Tiny Song"}
    audio, sr = sf.read(str(tmp_path / "out" / first["path"]))
    assert sr == 44100 and audio.shape == (44100, 2)
    # The song has one kick per bar (2 s at 120 bpm): the loop starts with it, then decays.
    assert np.abs(audio[:2205]).max() > 0.5 and np.abs(audio[22050:]).max() < 0.05
