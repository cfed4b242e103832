"""What precomputed shards buy: examples per second delivered to the training loop.

(a) shards: ``tria.data.ShardDataset`` through ``ShardLoader`` (in the training process, no
    workers: the strictest case) over shards written by the pipeline's ``ShardSink`` in a temp dir,
    with the real member sizes: tokens (9, 516) int16, feats (K=4, 2, 516) float16, json metadata.
    One full epoch per repeat; each batch is moved to ``--device``.
(b) on the fly: what the authors' trainer does every step (SPEC 4.1, 5.2, 5.3), batch for batch:
    for each item pick a wav file, salience search (up to 8 random 6 s windows read with
    soundfile, the first with RMS >= -24 dBFS, else the loudest), downmix, stack; then DAC encode
    the target (``--codec-size full``: the real architecture with random weights, or tiny), the
    rhythm-prompt augmentation chain (``tria.transforms.augment_rhythm``, paper config) and rhythm
    features (paper preset) aligned to the 516 token frames, all on ``--device``.

Same batch size, same device. (b) uses this project's batched augmentation, which is already
faster than the authors' per-item chain (benchmarks/augment.py), so the ratio is a lower bound. The
wav files are rendered drum loops whose first 40 % is 40 dB down (an intro), so some salience tries
fail as they do on real stems.

    python -m benchmarks.feed                       # CPU, B=4, full DAC (1 timed step)
    python -m benchmarks.feed --codec-size tiny --quick
    python -m benchmarks.feed --device cuda         # B=24 (the authors' batch), 5 timed steps
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmarks import _common as C

C.use_test_helpers()
from pipeline_fixtures import render_loop  # noqa: E402
from pipelines.rows import stable_id  # noqa: E402
from pipelines.stages.excerpt import rms_db  # noqa: E402  (the filter stage's salience level)
from pipelines.stages.shard import ShardConfig, ShardSink  # noqa: E402
from tria.codec import Codec  # noqa: E402
from tria.data import ReaderConfig, ShardDataset, ShardLoader, ShardSpec  # noqa: E402
from tria.features import RhythmFeatureConfig, align_features, rhythm_features  # noqa: E402
from tria.transforms import AugmentConfig, augment_rhythm  # noqa: E402

SR = 44_100
SECONDS = 6.0
N = int(SECONDS * SR)
T = N // 512  # 516 token frames
K_VARIANTS = 4
LOUDNESS_CUTOFF_DB = -24.0  # SPEC 5.2 (RMS, not LUFS)
SALIENCE_TRIES = 8


# ----------------------------------------------------------------------------------------------
# (a) shards
# ----------------------------------------------------------------------------------------------


def write_shards(root: Path, n_samples: int, per_shard: int, seed: int = 0) -> list[ShardSpec]:
    """Shards in the pipeline's format (token and prompt field sets) with realistic member sizes."""
    rng = np.random.default_rng(seed)
    sink = ShardSink(root, ShardConfig(samples_per_shard=per_shard, flac_splits=()),
                     register=lambda row, keys, group: None,
                     ids={"codec_id": "dac-random-full-s0", "features_id": "bench", "augment_id": "bench"})
    for i in range(n_samples):
        key = stable_id("bench", i)
        feats = (rng.integers(0, 33, (K_VARIANTS, 2, T)) / 32).astype(np.float16)  # paper grid
        meta = {"key": key, "source": "bench", "track": f"t{i}", "stem": "drums", "split": "train",
                "tier": "isolated", "offset_s": 0.0, "duration_s": SECONDS, "n_frames": T,
                "loudness_db": -20.0, "sample_rate": SR}
        tokens = rng.integers(0, 1024, (9, T)).astype(np.int16)
        sink.add({"key": key, "tokens": tokens, "feats": feats, "meta": meta})
    rows = sink.close()
    prompts = {r.group_id: r.path for r in rows if r.kind == "prompts"}
    return [ShardSpec(r.path, r.n_samples, r.sha256, prompts=prompts[r.group_id]) for r in rows if r.kind == "tokens"]


def shard_epoch(loader: ShardLoader, device: str) -> int:
    """Read one epoch, moving each batch to ``device``; returns the examples delivered."""
    n = 0
    for batch in loader:
        batch["feats"].to(device)
        n += batch["tokens"].to(device).shape[0]
    C.sync(device)
    return n


# ----------------------------------------------------------------------------------------------
# (b) on the fly
# ----------------------------------------------------------------------------------------------


def write_wavs(root: Path, n_files: int, seconds: float) -> list[tuple[str, int]]:
    """Stereo 16-bit drum stems whose first 40 % is 40 dB down; returns (path, frames)."""
    files = []
    for i in range(n_files):
        y = render_loop(seconds, seed=i)  # (n, 2)
        y[: int(0.4 * len(y))] *= 0.01
        path = root / f"stem_{i:02d}.wav"
        sf.write(path, y, SR, subtype="PCM_16")
        files.append((str(path), len(y)))
    return files


def salient_excerpt(files: list[tuple[str, int]], idx: int) -> np.ndarray:
    """The authors' StemDataset draw for item ``idx``: a random file, then the salience search. (N,)"""
    rs = np.random.RandomState(idx)
    path, frames = files[rs.randint(len(files))]
    best: tuple[float, np.ndarray] | None = None
    for _ in range(SALIENCE_TRIES):
        start = int(rs.uniform(0, frames - N)) if frames > N else 0
        x = sf.read(path, start=start, frames=N, dtype="float32", always_2d=True)[0].mean(1)  # reopen per try
        level = rms_db(x)
        if best is None or level > best[0]:
            best = (level, x)
        if level >= LOUDNESS_CUTOFF_DB:
            break
    out = np.zeros(N, np.float32)
    out[: len(best[1])] = best[1]
    return out


class OnTheFly:
    """One training step's worth of data, made the authors' way; ``step`` returns seconds per part."""

    def __init__(self, files: list[tuple[str, int]], codec: Codec, batch: int, device: str):
        self.files, self.codec, self.batch, self.device = files, codec, batch, device
        self.augment = AugmentConfig.paper()
        self.features = RhythmFeatureConfig.paper()

    def step(self, step: int) -> dict[str, float]:
        times, t = {}, time.perf_counter()
        idx = [step * self.batch + i for i in range(self.batch)]

        def lap(name: str) -> None:
            nonlocal t
            C.sync(self.device)
            now = time.perf_counter()
            times[name] = now - t
            t = now

        x = torch.from_numpy(np.stack([salient_excerpt(self.files, i) for i in idx]))[:, None].to(self.device)
        lap("load + salience search")
        tokens = self.codec.encode(x, SR, batch_size=self.batch)  # (B, 9, 516)
        lap("DAC encode")
        with torch.no_grad():
            prompts = augment_rhythm(x, SR, idx, self.augment)
            lap("augmentation chain")
            feats = align_features(rhythm_features(prompts, SR, self.features), tokens.shape[-1])
            lap("rhythm features")
        assert tokens.shape == (self.batch, 9, T) and feats.shape == (self.batch, 2, T)
        return times


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = C.parser(__doc__)
    ap.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, 24 on CUDA")
    ap.add_argument("--steps", type=int, default=None, help="timed on-the-fly steps (default: 1 with the "
                    "full codec on CPU, else 3; 5 on CUDA)")
    ap.add_argument("--codec-size", choices=("full", "tiny"), default="full")
    ap.add_argument("--samples", type=int, default=2048, help="samples in the shards")
    ap.add_argument("--per-shard", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="epochs read from the shards")
    ap.add_argument("--files", type=int, default=8, help="wav stems for the on-the-fly side")
    ap.add_argument("--file-seconds", type=float, default=30.0)
    args = ap.parse_args(argv)
    C.setup(args)
    cuda = args.device.startswith("cuda")
    B = args.batch or (24 if cuda else 4)
    steps = args.steps or (5 if cuda else 1 if args.codec_size == "full" else 3)
    if args.quick:
        args.samples, args.repeats, args.files, args.file_seconds, steps = 256, 2, 4, 12.0, 1

    with tempfile.TemporaryDirectory(prefix="tria-bench-feed-") as tmp:
        tmp = Path(tmp)
        specs = write_shards(tmp / "shards", args.samples, args.per_shard)
        paths = [Path(p) for s in specs for p in (s.url, s.prompts)]
        files = write_wavs(tmp, args.files, args.file_seconds)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"feed benchmark: B={B}, {args.samples} samples in {len(paths)} shards ({mb:.0f} MB) vs "
              f"{args.files} wav stems of {args.file_seconds:g} s; device {args.device}; "
              f"codec {args.codec_size} (random weights)")
        print(C.hardware_line(args.device))

        # (a) shards: one untimed epoch fills the page cache (the trainer reads the same shards every epoch).
        loader = ShardLoader(ShardDataset(specs, ReaderConfig(batch_size=B, seed=0)))
        shard_t = C.measure(lambda: shard_epoch(loader, args.device), warmup=1, repeats=args.repeats,
                            device=args.device)
        n_epoch = (args.samples // B) * B
        shard_rate = n_epoch / shard_t.median

        # (b) on the fly. Warm-up: augmentation and features at the real size with the first step's
        # seeds (their filter caches then hit, as in a long run), the codec on a 1 s clip.
        codec = Codec.load("random", size=args.codec_size, device=args.device, quiet=True)
        fly = OnTheFly(files, codec, B, args.device)
        codec.encode(torch.zeros(1, 1, SR, device=args.device) + 0.01, SR)
        with torch.no_grad():
            x0 = np.stack([salient_excerpt(files, i) for i in range(B)])
            x0 = torch.from_numpy(x0)[:, None].to(args.device)
            rhythm_features(augment_rhythm(x0, SR, list(range(B)), fly.augment), SR, fly.features)
        parts = [fly.step(s) for s in range(steps)]
        part_s = {k: float(np.median([p[k] for p in parts])) for k in parts[0]}
        fly_s = float(np.median([sum(p.values()) for p in parts]))
        fly_rate = B / fly_s
        no_load_rate = B / (fly_s - part_s["load + salience search"])

        rows = [[f"(a) shards, {args.repeats} epochs (median)", shard_t.median * B / n_epoch, "", shard_rate],
                [f"(b) on the fly, {steps} step(s) (median)", fly_s, "100%", fly_rate]]
        rows += [[f"    {k}", v, f"{100 * v / fly_s:.1f}%", B / v] for k, v in part_s.items()]
        print(C.table(["path", "s per batch", "share", "examples/s"], rows))
        if args.profile:
            print("\ncProfile of one on-the-fly step:")
            print(C.profile_summary(lambda: fly.step(steps), top=12, sort="tottime"))
    C.summary("feed", [f"shards/on-the-fly = {shard_rate / fly_rate:,.0f}x examples/s "
                       f"({shard_rate:,.0f} vs {fly_rate:.3g} ex/s, B={B}, {args.codec_size} DAC, "
                       f"{args.device})",
                       f"vs on-the-fly without file loading {shard_rate / no_load_rate:,.0f}x"])


if __name__ == "__main__":
    main()
