"""`make demo`: the main job on the embedded demo corpus.

Today this runs the smallest real end-to-end path that exists: it synthesises a drum loop,
computes its rhythm features with the paper and release settings, tokenizes it with the DAC
codec and decodes the tokens back, printing shapes, timings and where the files are.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tria.audio import save_audio
from tria.codec import Codec
from tria.features import RhythmFeatureConfig, rhythm_features

SR = 44_100


def synth_loop(seconds: float = 6.0, bpm: float = 100.0, seed: int = 0) -> np.ndarray:
    """A simple kick/snare/hat groove from envelopes and noise: (N,) float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    y = np.zeros(n, dtype=np.float32)
    beat = 60.0 / bpm
    t = np.arange(int(0.4 * SR)) / SR
    kick = np.sin(2 * np.pi * np.cumsum(45 + 90 * np.exp(-t / 0.03)) / SR) * np.exp(-t / 0.12)
    snare = rng.standard_normal(len(t)) * np.exp(-t / 0.07) * 0.6 + np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.05) * 0.4
    hat = np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t / 0.015) * 0.25
    for i in range(int(seconds / (beat / 2))):
        at = int(i * beat / 2 * SR)
        for sound, hit in ((hat, True), (kick, i % 4 == 0), (snare, i % 4 == 2)):
            if hit:
                m = min(len(sound), n - at)
                y[at:at + m] += sound[:m].astype(np.float32) * rng.uniform(0.8, 1.0)
    return 0.9 * y / np.abs(y).max()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    ap.add_argument("--codec", default="random", help="codec weights: random | official | PATH")
    ap.add_argument("--codec-size", default="tiny", choices=["tiny", "full"])
    args = ap.parse_args(argv)
    out = Path(args.out)

    loop = synth_loop()
    loop_path = save_audio(out / "loop.wav", loop, SR)
    audio = torch.from_numpy(loop)[None, None]  # (1, 1, N)
    print(f"drum loop: {loop_path} ({len(loop) / SR:.1f} s)")

    for name, cfg in (("paper", RhythmFeatureConfig.paper()), ("release", RhythmFeatureConfig.release())):
        t0 = time.perf_counter()
        feats = rhythm_features(audio, SR, cfg)
        print(f"rhythm features ({name}, {cfg.config_id}): shape {tuple(feats.shape)}, "
              f"{len(feats.unique())} levels used, {time.perf_counter() - t0:.2f} s")

    codec = Codec.load(args.codec, size=args.codec_size)
    t0 = time.perf_counter()
    codes = codec.encode(audio, SR)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    recon = codec.decode(codes)
    t_dec = time.perf_counter() - t0
    recon_path = save_audio(out / "loop_codec_roundtrip.wav", recon[0].clamp(-1, 1), SR)
    print(f"DAC tokens: shape {tuple(codes.shape)} (codebooks x frames), encode {t_enc:.2f} s, decode {t_dec:.2f} s")
    print(f"codec round trip: {recon_path}")
    if args.codec == "random":
        print("note: the codec is randomly initialised (no weights download here), so the round trip is noise; "
              "run `python -m tria.demo --codec official --codec-size full` online for real DAC audio.")


if __name__ == "__main__":
    main()
