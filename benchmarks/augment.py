"""Rhythm-prompt augmentation: the batched chain (tria/transforms.py) against a per-example reference.

The reference is the authors' algorithm written plainly, one item at a time (SPEC 5.3, 9.3):
julius high-pass then low-pass with zeros=2049 (kernels cached, as the authors' FilterCache does),
a 2048/512 STFT phase shift, torchaudio's phase vocoder verbatim at n_fft = sr // 64, hop 21, then
julius resampling, julius SplitBands equalisers, and the authors' SNR mix. Both sides get the same
input and the same drawn parameters; every stage is forced on (tfm_prob = 1), so the table shows
each stage's cost. The fidelity columns compare each batched stage output with the reference
output for the same stage input: waveform SNR, and the correlation of onset envelopes (what the
rhythm features read), which is the meaningful one for the phase vocoders.

    python -m benchmarks.augment                 # B=8 x 6 s at 44.1 kHz, CPU (from the repo root)
    python -m benchmarks.augment --batch 4 --seconds 3
"""

from __future__ import annotations

import argparse
import math
import time
from functools import lru_cache
from typing import Callable

import julius
import numpy as np
import torch
import torch.nn.functional as F

from tria import transforms as T

SR = 44_100


# ----------------------------------------------------------------------------------------------
# Per-example reference (the authors' algorithm, one item at a time)
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _julius_lowpass(cutoff_hz: int, zeros: int, device: torch.device) -> julius.LowPassFilter:
    return julius.LowPassFilter(cutoff_hz / SR, zeros=zeros).to(device)


def ref_band_pass(x: torch.Tensor, p: dict) -> torch.Tensor:
    lo, hi = p["band_pass"]["low_hz"], p["band_pass"]["high_hz"]
    y = x - _julius_lowpass(lo, 2049, x.device)(x)  # julius HighPassFilter = x - low-pass(x)
    return _julius_lowpass(hi, 2049, x.device)(y)


def ref_shift_phase(x: torch.Tensor, p: dict) -> torch.Tensor:
    window = torch.hann_window(2048, device=x.device)
    spec = torch.stft(x, 2048, 512, window=window, center=True, pad_mode="reflect", return_complex=True)
    spec = spec * complex(math.cos(p["shift_phase"]["shift_rad"]), math.sin(p["shift_phase"]["shift_rad"]))
    return torch.istft(spec, 2048, 512, window=window, center=True, length=x.shape[-1])


def torchaudio_phase_vocoder(spec: torch.Tensor, rate: float, hop: int) -> torch.Tensor:
    """torchaudio.functional.phase_vocoder, line for line (torchaudio cannot load here)."""
    phase_advance = torch.linspace(0, math.pi * hop, spec.shape[-2], device=spec.device)[..., None]
    time_steps = torch.arange(0, spec.size(-1), rate, device=spec.device)
    alphas = time_steps % 1.0
    phase_0 = spec[..., :1].angle()
    spec = F.pad(spec, [0, 2])
    spec_0 = spec.index_select(-1, time_steps.long())
    spec_1 = spec.index_select(-1, (time_steps + 1).long())
    phase = spec_1.angle() - spec_0.angle() - phase_advance
    phase = phase - 2 * math.pi * torch.round(phase / (2 * math.pi)) + phase_advance
    phase = torch.cumsum(torch.cat([phase_0, phase[..., :-1]], dim=-1), -1)
    mag = alphas * spec_1.abs() + (1 - alphas) * spec_0.abs()
    return torch.polar(mag, phase)


@lru_cache(maxsize=128)
def _julius_resampler(old_sr: int, new_sr: int, device: torch.device) -> julius.ResampleFrac:
    return julius.ResampleFrac(old_sr, new_sr).to(device)


def ref_pitch_shift(x: torch.Tensor, p: dict) -> torch.Tensor:
    ratio, n = p["pitch_shift"]["ratio"], x.shape[-1]
    n_fft = SR // 64
    hop, window = n_fft // 32, torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="reflect", return_complex=True)
    spec = torchaudio_phase_vocoder(spec, 1.0 / ratio, hop)
    y = torch.istft(spec, n_fft, hop, window=window, center=True, length=int(n * ratio))
    y = _julius_resampler(SR, round(SR / ratio), x.device)(y)
    return F.pad(y[..., :n], (0, max(0, n - y.shape[-1])))


@lru_cache(maxsize=4)
def _split_bands(n_bands: int, device: torch.device) -> julius.SplitBands:
    return julius.SplitBands(SR, n_bands).to(device)


def ref_equalize(x: torch.Tensor, gains_log10: list[float]) -> torch.Tensor:
    bands = _split_bands(len(gains_log10), x.device)(x)  # (n_bands, 1, N)
    return (bands * (10 ** torch.tensor(gains_log10, device=x.device))[:, None, None]).sum(0)


def ref_noise(x: torch.Tensor, p: dict) -> torch.Tensor:
    q = p["filtered_noise"]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(q["noise_seed"])).to(x.device)
    noise = ref_equalize(noise / noise.abs().max(), q["gains_log10"])
    level = 10 * torch.log10(x.square().mean() + 1e-8) - 10 * torch.log10(noise.square().mean() + 1e-8)
    return x + torch.sqrt(10 ** ((level - q["snr_db"]) / 10)) * noise


def ref_normalize(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The authors' NormalizedBaseTransform: peak-limit, match energy (+EPS), peak-limit."""
    y = y / y.abs().max().clamp_min(1.0)
    y = y * torch.sqrt((x.square().mean() + 1e-8) / (y.square().mean() + 1e-8))
    return y / y.abs().max().clamp_min(1.0)


REF_STAGES: dict[str, Callable[[torch.Tensor, dict], torch.Tensor]] = {
    "band_pass": ref_band_pass,
    "shift_phase": ref_shift_phase,
    "pitch_shift": ref_pitch_shift,
    "equalizer": lambda x, p: ref_equalize(x, p["equalizer"]["gains_log10"]),
    "filtered_noise": ref_noise,
}


def ref_chain(x: torch.Tensor, params: list[dict]) -> torch.Tensor:
    """(B, 1, N): every item through every stage, one at a time."""
    out = []
    for item, p in zip(x, params):
        for name, fn in REF_STAGES.items():
            if p[name]["apply"]:
                item = ref_normalize(fn(item, p), item)
        out.append(item)
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------
# Batched stages (tria.transforms) with the same inputs
# ----------------------------------------------------------------------------------------------


def batched_stage(name: str, x: torch.Tensor, params: list[dict], config: T.AugmentConfig) -> torch.Tensor:
    """One stage of augment_rhythm on (B, N) rows, normalised as in the chain (its own helpers)."""
    col = lambda key: [p[name][key] for p in params]  # noqa: E731
    values = lambda key: torch.tensor(col(key), device=x.device)  # noqa: E731
    if name == "band_pass":
        y = T.band_pass(x, SR, col("low_hz"), col("high_hz"), config.band_pass_zeros)
    elif name == "shift_phase":
        y = T.shift_phase(x, values("shift_rad"))
    elif name == "pitch_shift":
        y = T.pitch_shift(x, SR, col("ratio"), config.pitch_window_div, config.pitch_overlap)
    elif name == "equalizer":
        y = T.equalize(x, SR, values("gains_log10"))
    else:
        noise = T.equalize(T._item_noise(col("noise_seed"), x.shape[-1], x), SR, values("gains_log10"))
        y = T.mix_at_snr(x, noise, values("snr_db"))
    return T._normalize(y, x, config.match_energy)


# ----------------------------------------------------------------------------------------------
# Test audio and metrics
# ----------------------------------------------------------------------------------------------


def drum_loop(seed: int, seconds: float) -> np.ndarray:
    """(N,) a random kick/snare/hat pattern at 100-140 BPM, peak 0.5."""
    rng = np.random.default_rng(seed)
    n, step = int(seconds * SR), 60 / rng.uniform(100, 140) / 4
    t = np.arange(int(0.4 * SR)) / SR
    kick = np.sin(2 * np.pi * np.cumsum(45 + 90 * np.exp(-t / 0.03)) / SR) * np.exp(-t / 0.12)
    snare = (0.6 * rng.standard_normal(t.size) + 0.5 * np.sin(2 * np.pi * 190 * t)) * np.exp(-t / 0.06)
    hat = np.diff(rng.standard_normal(t.size + 1)) * np.exp(-t / 0.015) * 0.3
    y = 0.003 * rng.standard_normal(n)
    for k in range(int(seconds / step)):
        i = int(k * step * SR)
        for sound, hit in ((kick, k % 8 in (0, 3, 6) or rng.random() < 0.1), (snare, k % 8 == 4),
                           (hat, k % 2 == 0 or rng.random() < 0.3)):
            if hit:
                m = min(sound.size, n - i)
                y[i:i + m] += sound[:m] * rng.uniform(0.6, 1.0)
    return (0.5 * y / np.abs(y).max()).astype(np.float32)


def snr_db(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.double().square().sum() / (y - ref).double().square().sum()))


def onset_envelope(x: torch.Tensor) -> torch.Tensor:
    """(B, F) spectral flux of a 2048/512 log-magnitude STFT, per frame."""
    window = torch.hann_window(2048, device=x.device)
    spec = torch.stft(x, 2048, 512, window=window, return_complex=True).abs()
    return torch.log1p(100 * spec).diff(dim=-1).clamp_min(0).sum(dim=-2)


def onset_corr(y: torch.Tensor, ref: torch.Tensor) -> float:
    a, b = onset_envelope(y), onset_envelope(ref)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return float(((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).mean())


def timed_pair(ref_fn: Callable[[], torch.Tensor], batched_fn: Callable[[], torch.Tensor],
               repeats: int) -> tuple[float, torch.Tensor, float, torch.Tensor]:
    """Best-of-``repeats`` seconds and output of each side, run alternately so that a busy
    machine slows both alike."""
    best, outs = [math.inf, math.inf], [torch.empty(0), torch.empty(0)]
    for _ in range(repeats):
        for i, fn in enumerate((ref_fn, batched_fn)):
            start = time.perf_counter()
            outs[i] = fn()
            if outs[i].is_cuda:
                torch.cuda.synchronize()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], outs[0], best[1], outs[1]


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many timed runs per side")
    ap.add_argument("--pitch-overlap", type=int, default=None, help="override AugmentConfig.pitch_overlap")
    ap.add_argument("--device", default="cpu", help="cpu (the default and the reported case) or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    overrides = {"pitch_overlap": args.pitch_overlap} if args.pitch_overlap else {}
    config = T.AugmentConfig.release(tfm_prob=1.0, **overrides)
    seeds = list(range(1000, 1000 + args.batch))
    params = [T.sample_params(s, config) for s in seeds]
    x = torch.from_numpy(np.stack([drum_loop(s, args.seconds) for s in seeds]))[:, None].to(args.device)

    # Warm both sides' caches (kernels, FFT plans) as a long training run would have them.
    T.augment_rhythm(x, SR, seeds, config)
    ref_chain(x, params)

    where = torch.cuda.get_device_name() if x.is_cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"augment benchmark: B={args.batch} x {args.seconds:g} s at {SR} Hz, {where}, "
          f"torch {torch.__version__}, best of {args.repeats}")
    print(f"config {config.config_id}: release, every stage on; pitch hop {SR // 64 // config.pitch_overlap} "
          f"(reference: {SR // 64 // 32})")
    print(f"{'stage':<16}{'per-example s':>14}{'batched s':>11}{'speedup':>9}{'SNR dB':>9}{'onset r':>9}")
    stage_in = x[:, 0]
    for name, ref_fn in REF_STAGES.items():
        def per_example() -> torch.Tensor:
            items = zip(stage_in, params)
            return torch.stack([ref_normalize(ref_fn(r[None], p), r[None])[0] for r, p in items])

        def batched() -> torch.Tensor:
            return batched_stage(name, stage_in, params, config)

        t_ref, ref, t_bat, out = timed_pair(per_example, batched, args.repeats)
        print(f"{name:<16}{t_ref:>14.3f}{t_bat:>11.3f}{t_ref / t_bat:>8.1f}x"
              f"{snr_db(out, ref):>9.1f}{onset_corr(out, ref):>9.3f}")
        stage_in = out  # next stage: both sides start from the batched output

    t_ref, ref, t_bat, out = timed_pair(lambda: ref_chain(x, params),
                                        lambda: T.augment_rhythm(x, SR, seeds, config), args.repeats)
    print(f"{'whole chain':<16}{t_ref:>14.3f}{t_bat:>11.3f}{t_ref / t_bat:>8.1f}x"
          f"{snr_db(out[:, 0], ref[:, 0]):>9.1f}{onset_corr(out[:, 0], ref[:, 0]):>9.3f}")
    audio_s = args.batch * args.seconds
    print(f"throughput: batched {audio_s / t_bat:.0f}x real time, "
          f"per-example {audio_s / t_ref:.0f}x real time")
    print(f"augment: batched/per_example speedup = {t_ref / t_bat:.2f}x")


if __name__ == "__main__":
    main()
