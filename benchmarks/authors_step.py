"""Our tria_small training step vs the authors' own training step, same device, same batch.

The authors' code is NOT part of this repository: give a checkout of https://github.com/interactiveaudiolab/tria
with ``--authors-repo PATH``. Both packages are called ``tria``, so each side runs in its own child
process (``--side ours|authors``); the parent alternates them (ours, authors, authors, ours, ...) and
prints the ratio of the median step times.

* ours: ``tria.train.Trainer.train_step`` of a ``model.size=small`` trainer (masks, forward, loss,
  backward, clip, AdamW, scheduler; fp16 autocast + GradScaler on CUDA), on a batch already on the device.
* authors: their ``tria.model.TRIA`` built as ``conf/paper_exp/small_musdb_2b.yml`` builds it, and the
  model part of ``train_loop`` in their ``scripts/train.py``, written against their own functions: their
  mask samplers (``tria.model.mask``), CFG dropout, their ``audiotools`` ``Accelerator`` (autocast and
  GradScaler when ``amp``), label-smoothed cross entropy over the masked positions of the chosen codebook,
  the per-codebook loss/accuracy logging they do every step, clip at 1e3, AdamW, ExponentialLR. Their DAC
  encode, augmentations and rhythm features are left out (they are data preparation, which our shards
  replace; ``benchmarks.feed`` measures that part).

Only their ``tria.model`` and ``tria.nn`` are imported: their package ``__init__`` imports the augmentation
stack (librosa, primePy, torchaudio), which the step does not use, so this script registers their ``tria``
folder as a bare package instead of running it.

    python -m benchmarks.authors_step --authors-repo ~/src/tria --device cuda     # B=24, T=516
    python -m benchmarks.authors_step --authors-repo ~/src/tria --quick           # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
T = 516  # frames of a 6 s excerpt at 44.1 kHz / 512
SMALL = dict(codebook_size=1024, n_codebooks=9, n_feats=2, n_channels=512, n_heads=8, n_layers=12, mult=4,
             p_dropout=0.2, p_token_dropout=0.0, bias=True, max_len=1000, pos_enc="rope", qk_norm=True,
             use_sdpa=True, interp="nearest", share_emb=True)  # their conf/paper_exp/small_musdb_2b.yml
SPAN = (0.5, 0.75)
P_CFG_DROPOUT = 0.8


def check_authors_repo(path: str | None) -> Path:
    if not path:
        raise SystemExit("--authors-repo PATH is required: a checkout of https://github.com/interactiveaudiolab/tria "
                         "(git clone https://github.com/interactiveaudiolab/tria); its code is not in this repository")
    repo = Path(path).expanduser().resolve()
    missing = [p for p in ("tria/model/tria.py", "tria/model/mask.py", "tria/nn/transformer.py")
               if not (repo / p).is_file()]
    if missing:
        raise SystemExit(f"--authors-repo {repo} is not a TRIA checkout: missing {', '.join(missing)}")
    return repo


def batch_tensors(batch: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 1024, (batch, 9, T), generator=g)
    feats = torch.randint(0, 33, (batch, 2, T), generator=g).float() / 32  # the paper's 33 levels
    return tokens, feats


# ----------------------------------------------------------------------------------------------
# Child: our step
# ----------------------------------------------------------------------------------------------

def ours_step_fn(device: str, batch: int):
    import torch

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from shard_fixtures import make_corpus, train_yaml
    from tria.train import Trainer, load_train_config

    tmp = Path(tempfile.mkdtemp(prefix="tria-bench-authors-"))
    make_corpus(tmp, n={("train", "isolated"): batch}, T=T, K=1, per_shard=batch)
    path = train_yaml(tmp, name="ours", model={"size": "small"}, device=device, num_iters=10**9, amp=True,
                      mask={"min_span_prop": SPAN[0], "max_span_prop": SPAN[1], "p_cfg_dropout": P_CFG_DROPOUT},
                      data={"batch_size": batch, "val_batches": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = Trainer(load_train_config(str(path), []))
    tokens, feats = batch_tensors(batch)
    b = {"tokens": tokens.to(trainer.device), "feats": feats.to(trainer.device), "lengths": torch.full((batch,), T),
         "tier": ["isolated"] * batch}  # as ShardLoader delivers it: tokens and feats on the device

    def step() -> None:
        trainer.train_step(b)  # ends with .item(): complete on return
        trainer.state.step += 1

    return step


# ----------------------------------------------------------------------------------------------
# Child: the authors' step
# ----------------------------------------------------------------------------------------------

def import_authors(repo: Path):
    """Their tria.model and tria.nn, without running their package __init__ (see the module docstring)."""
    spec = importlib.util.spec_from_file_location("_tria_scale_compat", ROOT / "tria" / "_compat.py")
    compat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compat)
    compat.install_torchaudio_placeholder()  # audiotools imports torchaudio at module level
    package = types.ModuleType("tria")
    package.__path__ = [str(repo / "tria")]
    sys.modules["tria"] = package
    from tria.model import mask
    from tria.model.tria import TRIA

    return TRIA, mask


def authors_step_fn(repo: Path, device: str, batch: int):
    import torch

    TRIA, M = import_authors(repo)
    from audiotools import ml  # after import_authors: it needs torchaudio or the placeholder
    torch.manual_seed(0)
    accel = ml.Accelerator(amp=device.startswith("cuda"))
    model = TRIA(**SMALL).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-6)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.999996)
    tokens, feats = (x.to(device) for x in batch_tensors(batch))
    lengths = torch.full((batch,), T, dtype=torch.long, device=device)
    offset = [0]

    def step() -> None:
        model.train()
        n, K, F = tokens.shape
        idx = torch.arange(n) + offset[0]
        seeds = M.format_seed(idx)
        t = torch.tensor([s.uniform(0, 1, (1,))[0] for s in seeds], device=device, dtype=torch.float)
        cb = torch.tensor([s.randint(0, K, (1,))[0] for s in seeds], device=device, dtype=torch.long)
        span = M.get_span_mask(tokens, *SPAN, idx, lengths)
        current = M.get_current_codebook_mask(tokens, cb)
        tokens_mask = M.combine_masks(span, current, M.get_next_codebooks_mask(tokens, cb),
                                      M.get_random_mask(tokens, M.cosine_schedule(t), idx))
        keep = torch.tensor([s.uniform(0, 1) > P_CFG_DROPOUT for s in seeds], device=device)
        feats_mask = ~span * keep[:, None]
        with accel.autocast():
            logits = model(tokens, feats, cb, tokens_mask, feats_mask, lengths=lengths)
            valid = torch.arange(F, device=device)[None, None, :] < lengths[:, None, None]
            loss_mask = current[:, :, None] & ~tokens_mask & valid
            ce = torch.nn.functional.cross_entropy(logits.permute(0, 3, 1, 2), tokens, reduction="none",
                                                   label_smoothing=0.1) * loss_mask.float()
            loss = ce.mean()
        with torch.no_grad():  # their per-step, per-example logging (one .item() per example and metric)
            acc = ((logits.argmax(-1) == tokens).float() * loss_mask).sum((1, 2)) / loss_mask.sum((1, 2)).clamp_min(1)
            _ = [(ce[i].mean().item(), acc[i].mean().item()) for i in range(n)]
        optimizer.zero_grad()
        accel.backward(loss)
        accel.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e3)
        accel.step(optimizer)
        scheduler.step()
        accel.update()
        loss.item()
        offset[0] += n

    return step


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.side == "ours":
        step = ours_step_fn(args.device, args.batch)
    else:
        step = authors_step_fn(check_authors_repo(args.authors_repo), args.device, args.batch)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps({"side": args.side, "times": times}), flush=True)


# ----------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------

def run_side(side: str, args) -> list[float]:
    cmd = [sys.executable, "-m", "benchmarks.authors_step", "--side", side, "--device", args.device,
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--authors-repo", args.authors_repo] if side == "authors" else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {side} step failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])["times"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--authors-repo", default=None, help="checkout of github.com/interactiveaudiolab/tria")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    ap.add_argument("--batch", type=int, default=24, help="batch size (default: the authors' 24)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per child (default: 30 cuda, 3 cpu)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per child (default: 5 cuda, 1 cpu)")
    ap.add_argument("--rounds", type=int, default=2, help="(ours, authors) child pairs, alternating order")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads in each child")
    ap.add_argument("--quick", action="store_true", help="B=2, 1 step, 1 round: a smoke test")
    ap.add_argument("--side", choices=("ours", "authors"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (30 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if args.quick:
        args.batch, args.steps, args.warmup, args.rounds = 2, 1, 1, 1
    if args.side:
        return child(args)
    check_authors_repo(args.authors_repo)
    sys.path.insert(0, str(ROOT))
    from benchmarks import _common as C

    print(f"authors' step benchmark: tria_small, B={args.batch}, T={T}, device {args.device}, "
          f"{args.rounds} rounds of {args.steps} timed steps per side")
    print(C.hardware_line(args.device))
    times: dict[str, list[float]] = {"ours": [], "authors": []}
    for r in range(args.rounds):
        for side in (("ours", "authors") if r % 2 == 0 else ("authors", "ours")):
            times[side] += run_side(side, args)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [[k, len(v), 1000 * med[k], 1000 * min(v), 1000 * max(v)] for k, v in times.items()]
    print(C.table(["step", "steps", "median ms", "min ms", "max ms"], rows))
    C.summary("authors_step", [f"ours/authors step time = {med['ours'] / med['authors']:.3f} "
                               f"(tria_small, B={args.batch}, {args.device}, {'fp16 autocast' if cuda else 'fp32'}; "
                               f"{1000 * med['ours']:.1f} vs {1000 * med['authors']:.1f} ms)"])


if __name__ == "__main__":
    main()
