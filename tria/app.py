"""A Gradio page for TRIA: upload or record a rhythm prompt and a timbre prompt, get drums back.

    python -m tria.app --checkpoint runs/x/checkpoints/latest.pt [--host 127.0.0.1] [--port 7860]

The page binds 127.0.0.1 by default, so only this machine can open it; pass `--host 0.0.0.0` to
serve a network (there is no authentication). It never reaches the internet (except, once, to
fetch an authors' release given by name as `--checkpoint`): Gradio analytics and its version
check are off, there is no share link, Hugging Face Hub is set offline, and the default theme's
fonts are served by Gradio itself. `--checkpoint` also takes the authors' own `model.pt`
(with `--codec-weights` their `dac_44.1kHz_7.7kbps.pt`).

Controls are the authors' app's (SPEC 6.3, `app` column): seed, number of outputs (seeds seed+i),
iterations per codebook, top-p (1 = off), temperature, CFG scale (0 = off), causal bias, mask
temperature, and "filter inputs". The results are audio players and a picture of the rhythm
features of the prompt and of each result.

Needs the `gradio` package (see requirements); the rest of the library does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Any

import numpy as np

from tria.audio import load_audio
from tria.checkpoint import CheckpointError
from tria.generate import (
    SAMPLE_RATE, GenerateError, LoadedCheckpoint, add_checkpoint_args, checkpoint_options, features_picture,
    generate_drums, have_matplotlib, load_for_generation,
)
from tria.sampling import DecodeStep, SamplerConfig

MAX_OUTPUTS = 3  # the authors' app makes 3 per click


def _offline_env() -> None:
    """Switch off everything in Gradio / HF Hub that would dial out; must run before `import gradio`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def sampler_from_controls(iterations: float, top_p: float, temp: float, guidance_scale: float,
                          causal_bias: float, mask_temp: float) -> SamplerConfig:
    """The app preset with the page's slider values; top-p 1, CFG 0, bias 0 mean off."""
    return dataclasses.replace(
        SamplerConfig.app(), iterations=int(iterations), top_p=None if top_p >= 1.0 else float(top_p),
        temp=float(temp), guidance_scale=float(guidance_scale) or None,
        causal_bias=float(causal_bias) or None, mask_temp=float(mask_temp))


class DrumMaker:
    """The page's callback: holds the loaded checkpoint and turns two uploads into drums."""

    def __init__(self, loaded: LoadedCheckpoint, duration_s: float = 6.0):
        self.loaded = loaded
        self.duration_s = duration_s

    def __call__(self, rhythm_path: str | None, timbre_path: str | None, seed: float, n_outputs: float,
                 iterations: float, top_p: float, temp: float, guidance_scale: float, causal_bias: float,
                 mask_temp: float, filter_inputs: bool, progress: Any = None) -> tuple:
        import gradio as gr

        if not rhythm_path or not timbre_path:
            raise gr.Error("Give both prompts: a rhythm prompt (tap, beatbox, ...) and a timbre prompt "
                           "(drums).")
        sampler = sampler_from_controls(iterations, top_p, temp, guidance_scale, causal_bias, mask_temp)
        n = int(n_outputs)
        total = sum(v["iterations"] for v in sampler.per_codebook(self.loaded.model.cfg.n_codebooks))
        done = [0]

        K = self.loaded.model.cfg.n_codebooks

        def on_step(step: DecodeStep) -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0] / total, desc=f"codebook {step.codebook + 1}/{K}")

        start = time.time()
        try:
            rhythm, r_sr = load_audio(rhythm_path)
            timbre, t_sr = load_audio(timbre_path)
            ck = self.loaded
            audio, info = generate_drums(
                rhythm, r_sr, timbre, t_sr, ck.model, ck.codec, ck.features, sampler, seed=int(seed),
                n_outputs=n, duration_s=self.duration_s, prefix_s=self.duration_s / 3,
                filter_inputs=bool(filter_inputs), callback=on_step)
        except ValueError as e:  # AudioError, GenerateError, bad sampler values: each says what is wrong
            raise gr.Error(" ".join(str(e).split())) from e
        players = [gr.Audio(value=(SAMPLE_RATE, _int16(audio[i])), visible=True) if i < n
                   else gr.Audio(value=None, visible=False) for i in range(MAX_OUTPUTS)]
        picture = features_picture(info) if have_matplotlib() else None
        status = (f"Made {n} output(s) of {audio.shape[-1] / SAMPLE_RATE:.2f} s (seeds "
                  f"{', '.join(map(str, info['seeds']))}) from {info['timbre_s']:.2f} s of timbre and "
                  f"{info['rhythm_s']:.2f} s of rhythm in {time.time() - start:.1f} s.")
        return (*players, picture, status)


def _int16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 PCM (what Gradio writes to its wav files without a conversion warning)."""
    return (np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)


def build_app(loaded: LoadedCheckpoint, duration_s: float = 6.0):
    """The page as a `gr.Blocks` (not launched)."""
    _offline_env()
    import gradio as gr

    maker = DrumMaker(loaded, duration_s)
    defaults = SamplerConfig.app()
    with gr.Blocks(title="TRIA: The Rhythm In Anything", analytics_enabled=False) as page:
        gr.Markdown("## TRIA: The Rhythm In Anything\nA **rhythm prompt** (tapping, beatboxing, any "
                    "percussive sound) plus a **timbre prompt** (a drum recording; its first "
                    f"{duration_s / 3:.1f} s are used) give drums that play that rhythm with that kit.")
        with gr.Row():
            rhythm = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Rhythm prompt",
                              elem_id="rhythm-prompt")
            timbre = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Timbre prompt",
                              elem_id="timbre-prompt")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
            n_outputs = gr.Slider(1, MAX_OUTPUTS, value=MAX_OUTPUTS, step=1, label="Number of outputs",
                                  elem_id="n-outputs")
            filter_inputs = gr.Checkbox(value=False,
                                        label="Filter inputs (rhythm band-passed 250 Hz - 8 kHz)")
        with gr.Accordion("Sampler", open=True):
            with gr.Row():
                iterations = gr.Slider(1, 32, value=defaults.iterations, step=1,
                                       label="Iterations per codebook", elem_id="iterations")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (1 = off)")
                temp = gr.Slider(0.1, 2.0, value=defaults.temp, step=0.05, label="Temperature")
            with gr.Row():
                cfg = gr.Slider(0.0, 10.0, value=defaults.guidance_scale, step=0.1,
                                label="CFG scale (0 = off)")
                bias = gr.Slider(0.0, 5.0, value=defaults.causal_bias, step=0.1,
                                 label="Causal bias (0 = off)")
                mask_temp = gr.Slider(0.0, 20.0, value=defaults.mask_temp, step=0.5, label="Mask temperature")
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            outputs = [gr.Audio(label=f"Result {i + 1}", type="numpy", format="wav", interactive=False,
                                elem_id=f"result-{i + 1}") for i in range(MAX_OUTPUTS)]
        picture = gr.Image(label="Rhythm features: prompt (grey) and results", type="numpy",
                           interactive=False, elem_id="features")
        gr.Markdown(f"<small>{loaded.describe()}</small>")

        def run(r, t, s, n, it, p, tm, g, b, mt, f, progress=gr.Progress()):
            return maker(r, t, s, n, it, p, tm, g, b, mt, f, progress=progress)

        button.click(run, [rhythm, timbre, seed, n_outputs, iterations, top_p, temp, cfg, bias, mask_temp,
                           filter_inputs], [*outputs, picture, status])
    return page


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tria.app", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(ap)
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves the network, "
                         "with no authentication)")
    ap.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    ap.add_argument("--duration", type=float, default=6.0,
                    help="token buffer in seconds (default 6.0: up to 2 s of timbre, then the rhythm)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _offline_env()
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("error: the page needs gradio: pip install -r requirements/base.txt (gradio==6.31.0)",
              file=sys.stderr)
        return 2
    try:
        loaded = load_for_generation(args.checkpoint, **checkpoint_options(args))
    except (CheckpointError, GenerateError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"[tria.app] {loaded.describe()}", flush=True)
    page = build_app(loaded, args.duration)
    print(f"[tria.app] serving http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    page.queue(default_concurrency_limit=1)  # one generation at a time: the model is shared
    page.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False, ssr_mode=False,
                show_error=True, footer_links=[], mcp_server=False, pwa=False, quiet=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
