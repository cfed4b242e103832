"""The Gradio page in a real headless Chromium: upload two prompts, generate, get playable drums.

Starts `python -m tria.app` in a subprocess on a free 127.0.0.1 port with a tiny random checkpoint
(and the tiny random-init codec), drives Debian's Chromium through playwright, fetches the result
wav the page plays and decodes it. Needs `apt-get install chromium` and the Python packages
gradio and playwright; a missing one FAILS this test (it is part of `make test`), it never skips.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from net import free_port
import soundfile as sf

from synth_audio import click_track, hat, kick, place
from tria.audio import save_audio
from tria.checkpoint import save_checkpoint
from tria.features import RhythmFeatureConfig
from tria.model import tria_tiny

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SR = 44_100
REPO = Path(__file__).resolve().parents[2]
# Without the networking flags Chromium keeps dialling out.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DURATION = 1.5  # the app's buffer: 0.5 s of timbre, up to 1.0 s of rhythm (86 frames)


def _chromium() -> str:
    for path in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail("Chromium is not installed: run `apt-get update && apt-get install -y chromium` (Debian's "
                "package; playwright's own browser download cannot work offline)", pytrace=False)


def _import_or_fail(name: str, pin: str):
    try:
        return __import__(name)
    except ImportError:
        pytest.fail(f"the Python package {name} is missing: pip install {pin} (see requirements/base.txt)",
                    pytrace=False)


@pytest.fixture
def app_server(tmp_path):
    """The page on a free port; yields (url, folder with the prompts). Stopped (by its pid) after the test."""
    _import_or_fail("gradio", "gradio==6.31.0")
    model = tria_tiny().eval()
    features = RhythmFeatureConfig.release()
    ckpt = save_checkpoint(tmp_path / "ckpt.pt", model.cfg, model, codec_id="dac-random-tiny-s0",
                           features=features.to_dict(), features_id=features.config_id)
    save_audio(tmp_path / "tap.wav", click_track([0.1, 0.35, 0.6, 0.85, 1.1], 1.4), SR)
    save_audio(tmp_path / "kit.wav", place([(0.0, kick()), (0.25, hat()), (0.5, kick())], 0.8), SR)
    port = free_port()
    # One OpenMP thread: on 2 shared cores two threads mostly wait on each other.
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "app.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tria.app", "--checkpoint", str(ckpt), "--port", str(port),
                             "--device", "cpu", "--duration", str(DURATION)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{(tmp_path / 'app.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"the app did not answer within 60 s:\n{(tmp_path / 'app.log').read_text()}")
            time.sleep(0.5)
        yield url, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        print((tmp_path / "app.log").read_text())  # shown by pytest when the test fails


def test_upload_generate_and_play(app_server):
    url, folder = app_server
    executable = _chromium()
    _import_or_fail("playwright", "playwright==1.65.2")
    from playwright.sync_api import sync_playwright

    outside, files = [], []
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(folder / "chromium-profile"), executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1400})
        try:
            page = ctx.new_page()
            page.on("request", lambda r: None if r.url.startswith((url[:-1], "data:", "blob:"))
                    else outside.append(r.url))
            page.on("response", lambda r: files.append(r.url) if "/gradio_api/file=" in r.url else None)
            page.goto(url, wait_until="networkidle")
            page.locator("#rhythm-prompt input[type=file]").set_input_files(str(folder / "tap.wav"))
            page.locator("#timbre-prompt input[type=file]").set_input_files(str(folder / "kit.wav"))
            for control, value in (("#iterations", "2"), ("#n-outputs", "2")):
                box = page.locator(f"{control} input[type=number]")
                box.fill(value)
                box.press("Enter")
            page.wait_for_selector("#timbre-prompt audio[src]", state="attached", timeout=15_000)
            page.locator("#generate").click()
            page.wait_for_selector("#result-2 audio[src]", state="attached", timeout=60_000)
            page.wait_for_selector("#features img[src]", timeout=20_000)
            status = page.locator("#status").inner_text()
            assert "Made 2 output(s)" in status and "seeds 0, 1" in status, status
            assert page.locator("#result-1 audio[src]").count() >= 1, "the player has a source"
            assert not page.locator("#result-3").is_visible(), "only the requested number of players shows"
            page.screenshot(path=str(folder / "app.png"), full_page=True)

            results = [u for u in dict.fromkeys(files) if u.endswith("/audio.wav")]
            assert len(results) == 2, files
            decoded = []
            for u in results:
                body = page.request.get(u).body()
                audio, sr = sf.read(io.BytesIO(body), dtype="float32")
                decoded.append(audio)
                # 0.5 s of timbre leaves 1.0 s of the 1.4 s rhythm prompt: 86 codec frames of 512 samples.
                assert sr == SR and audio.shape == (int((DURATION - DURATION / 3) * SR) // 512 * 512,)
                assert np.sqrt(np.mean(audio**2)) > 1e-3, "the result is not silent"
            assert not np.allclose(decoded[0], decoded[1]), "seeds 0 and 1 give different drums"
        finally:
            ctx.close()
    assert outside == [], f"the page reached outside 127.0.0.1: {outside}"
    assert (folder / "app.png").stat().st_size > 50_000


def test_page_callback_errors_and_defaults(tmp_path, capsys):
    """The callback behind the button, without a browser: clear messages, the app's sampler mapping."""
    gr = _import_or_fail("gradio", "gradio==6.31.0")
    from tria.app import DrumMaker, build_parser, main, sampler_from_controls
    from tria.codec import Codec
    from tria.generate import LoadedCheckpoint
    from tria.sampling import SamplerConfig

    assert "127.0.0.1" in build_parser().format_help()
    assert build_parser().parse_args(["--checkpoint", "c"]).host == "127.0.0.1"
    s = sampler_from_controls(8, 1.0, 1.0, 2.0, 1.0, 10.5)
    assert s == SamplerConfig.app()  # the page's initial sliders are the authors' app defaults
    s = sampler_from_controls(4, 0.9, 0.8, 0.0, 0.0, 3.0)
    got = (s.iterations, s.top_p, s.temp, s.guidance_scale, s.causal_bias, s.mask_temp)
    assert got == (4, 0.9, 0.8, None, None, 3.0)
    model = tria_tiny().eval()
    codec = Codec.load("random", size="tiny", quiet=True)
    loaded = LoadedCheckpoint(tmp_path, model, codec, RhythmFeatureConfig.release(), codec.config_id, None)
    maker = DrumMaker(loaded)
    save_audio(tmp_path / "short.wav", click_track([0.1], 0.3), SR)
    save_audio(tmp_path / "kit.wav", place([(0.0, kick())], 0.8), SR)
    controls = (0, 1, 2, 1.0, 1.0, 2.0, 1.0, 10.5, False)
    with pytest.raises(gr.Error, match="Give both prompts"):
        maker(None, str(tmp_path / "kit.wav"), *controls)
    with pytest.raises(gr.Error, match="rhythm prompt too short: 0.30 s"):
        maker(str(tmp_path / "short.wav"), str(tmp_path / "kit.wav"), *controls)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(gr.Error, match="unreadable"):
        maker(str(tmp_path / "bad.wav"), str(tmp_path / "kit.wav"), *controls)
    assert main(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint not found") and "\n" not in err
