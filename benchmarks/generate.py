"""Generation latency: 6 s of drums with the authors' default sampler, tria_tiny and tria_small.

The prompt is the app's layout (SPEC 6.1): a 6 s buffer of 516 frames, the first 2 s (172 frames)
timbre tokens, visible, then 4 s (344 frames) to generate from rhythm features. The sampler is
``SamplerConfig()``: 8 iterations x 9 codebooks with CFG 2.0, i.e. 72 model calls on a doubled
batch = 144 forward passes of a 516-frame sequence. Random weights: the cost does not depend on
them. Codec decode of the generated 4 s (full DAC architecture, random weights) is timed apart.

RTF (real-time factor) = seconds of compute per second of generated audio (< 1: faster than
real time).

On a CPU, tria_small's full loop takes minutes, so by default it runs 1 iteration per codebook
(9 calls) and the time is scaled to 72 calls: every call runs the model on the same doubled
batch of 516 frames, so the scaled number is the full-loop time up to the per-iteration sampling
bookkeeping (top-p sort, Gumbel re-masking), which the tiny row, run in full, shows is small
beside a tria_small call. ``--full`` runs all 72.

    python -m benchmarks.generate                     # CPU (and CUDA when visible), B=1
    python -m benchmarks.generate --device cuda --full
"""

from __future__ import annotations

import dataclasses
import time

import torch

from benchmarks import _common as C
from tria.codec import Codec
from tria.model import TRIA, tria_small, tria_tiny
from tria.sampling import SamplerConfig, generate, prompt_layout

T, PREFIX = 516, 172  # 6 s buffer, 2 s timbre prefix (app.py layout)
SR, HOP = 44_100, 512
GEN_S = (T - PREFIX) * HOP / SR  # 4.0 s generated
BUILDERS = {"tiny": tria_tiny, "small": tria_small}


def make_prompt(batch: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    timbre = torch.randint(0, 1024, (batch, 9, PREFIX), generator=g)
    feats = torch.randint(0, 33, (batch, 2, T - PREFIX), generator=g).float() / 32  # paper grid
    p = prompt_layout(timbre, feats)
    return {k: getattr(p, k).to(device) for k in ("tokens", "feats", "tokens_mask", "feats_mask")}


class CallCounter:
    """Counts model calls and the sequences they carry (a CFG call carries 2B)."""

    def __init__(self, model: torch.nn.Module):
        self.calls = self.sequences = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.calls += 1
        self.sequences += inputs[0].shape[0]


def time_generate(model: TRIA, prompt: dict, config: SamplerConfig, device: str) -> tuple[float, int, int]:
    counter = CallCounter(model)
    C.sync(device)
    t0 = time.perf_counter()
    out = generate(model, prompt["tokens"], prompt["feats"], prompt["tokens_mask"], prompt["feats_mask"],
                   None, config, seed=0)
    C.sync(device)
    secs = time.perf_counter() - t0
    counter.handle.remove()
    assert out.shape == prompt["tokens"].shape
    assert bool((out[:, :, :PREFIX] == prompt["tokens"][:, :, :PREFIX]).all()), "the prompt was overwritten"
    return secs, counter.calls, counter.sequences


def bench_device(device: str, sizes: list[str], batch: int, full: bool, repeats: int) -> tuple[list, dict]:
    default = SamplerConfig()
    full_calls = 9 * default.iterations
    prompt = make_prompt(batch, device)
    rows, res = [], {}
    for size in sizes:
        torch.manual_seed(0)
        model = BUILDERS[size]().to(device).eval()
        scaled = size == "small" and device == "cpu" and not full
        config = dataclasses.replace(default, iterations=1) if scaled else default
        with torch.no_grad():  # warm-up: one CFG-sized call
            two = {k: torch.cat([v, v]) for k, v in prompt.items()}
            model(two["tokens"], two["feats"], torch.zeros(2 * batch, dtype=torch.long, device=device),
                  two["tokens_mask"], two["feats_mask"])
        runs = [time_generate(model, prompt, config, device) for _ in range(1 if scaled else repeats)]
        secs = sorted(r[0] for r in runs)[len(runs) // 2]
        calls, seqs = runs[0][1], runs[0][2]
        if scaled:
            secs, note = secs * full_calls / calls, f"scaled from {calls} calls"
            calls, seqs = full_calls, seqs * full_calls // runs[0][1]
        else:
            note = f"median of {len(runs)}" if len(runs) > 1 else "1 run"
        res[size] = secs
        rows.append([f"tria_{size} generate", device, calls, seqs, secs, 1000 * secs / calls, secs / GEN_S,
                     note])
        del model
    codec = Codec.load("random", size="full", device=device, quiet=True)
    codes = torch.randint(0, 1024, (batch, 9, T - PREFIX))
    codec.decode(codes[:, :, :8])  # warm-up
    decode = C.measure(lambda: codec.decode(codes), warmup=0, repeats=1 if device == "cpu" else repeats,
                       device=device)
    res["decode"] = decode.median
    rows.append(["DAC decode (full)", device, "", "", decode.median, "", decode.median / GEN_S,
                 f"{batch} x {GEN_S:.1f} s"])
    for size in sizes:
        total = res[size] + decode.median
        rows.append([f"tria_{size} + decode", device, "", "", total, "", total / GEN_S, "end to end"])
    return rows, res


def main(argv: list[str] | None = None) -> None:
    ap = C.parser(__doc__, tuple(BUILDERS))
    ap.set_defaults(device="auto-all")
    ap.add_argument("--batch", type=int, default=1, help="outputs generated at once (the app makes 3)")
    ap.add_argument("--full", action="store_true", help="run all 72 calls of tria_small on CPU too")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.device == "auto-all":  # CPU, and the GPU when there is one
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        args.device = "cpu"
    else:
        devices = None
    C.setup(args)
    devices = devices or [args.device]
    sizes = C.sizes_of(args, tuple(BUILDERS))
    if args.quick:
        sizes, args.repeats = ["tiny"], 1
    d = SamplerConfig()
    print(f"generate benchmark: B={args.batch}, {T} frames ({PREFIX} prompt + {T - PREFIX} generated = "
          f"{GEN_S:.1f} s), SamplerConfig(): {d.iterations} iterations x 9 codebooks, "
          f"CFG {d.guidance_scale}, top-p {d.top_p}; devices {', '.join(devices)}")
    print(C.hardware_line(devices[-1]))
    rows, res = [], {}
    for device in devices:
        r, res[device] = bench_device(device, sizes, args.batch, args.full, args.repeats)
        rows += r
    headers = ["what", "device", "model calls", "forward passes", "seconds", "ms per call", "RTF", "note"]
    print(C.table(headers, rows))
    parts = []
    for device in devices:
        x = res[device]
        if "small" in x and "tiny" in x:
            parts.append(f"{device}: small/tiny latency = {x['small'] / x['tiny']:.1f}x")
        big = "small" if "small" in x else sizes[0]
        parts.append(f"{device}: tria_{big}+decode RTF = {(x[big] + x['decode']) / GEN_S:.2f} "
                     f"(decode {100 * x['decode'] / (x[big] + x['decode']):.0f}% of it)")
    if len(devices) > 1:
        big = "small" if "small" in sizes else sizes[0]
        parts.append(f"cpu/cuda tria_{big} latency = {res['cpu'][big] / res['cuda'][big]:.0f}x")
    C.summary("generate", parts)


if __name__ == "__main__":
    main()
