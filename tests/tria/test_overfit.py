"""End-to-end check of model + objective + sampler: overfit one small batch, then regenerate it.

The data imitate what TRIA learns: each example has its own "kit" (one token per codebook for
each of S rhythm states) and a rhythm (a sequence of states, shown to the model as 2-band
features). Reproducing an example from its 16-frame prefix and its features needs the kit
(from the prefix tokens) and the rhythm (from the features), exactly the model's task.
"""

import math
import time

import pytest
import torch

from tria.masking import MaskConfig, build_training_batch, masked_token_loss
from tria.model import tria_tiny
from tria.sampling import SamplerConfig, generate, prompt_layout

B, K, T, S, PREFIX = 4, 9, 64, 9, 16


def make_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, K, T) and features (B, 2, T) where tokens[b, :, t] = kit_b[state_b(t)]."""
    g = torch.Generator().manual_seed(seed)
    kits = torch.randint(0, 1024, (B, K, S), generator=g)  # (B, K, S)
    states = torch.randint(0, S, (B, T), generator=g)  # (B, T)
    tokens = torch.gather(kits, 2, states[:, None, :].expand(B, K, T))  # (B, K, T)
    feats = torch.stack([(states // 3) / 2, (states % 3) / 2], dim=1).float()  # (B, 2, T), 3 levels per band
    return tokens, feats


def overfit(
    steps: int = 200, lr: float = 5e-3, seed: int = 0, cosine: bool = True
) -> tuple[torch.nn.Module, list[float]]:
    """Train `tria_tiny` on the one batch.

    Measured on 6 seeds: with cosine decay all regenerated >= 99.5 % of the tokens; with a
    constant lr (3e-3, 300 steps) one seed stopped at 86.5 %, hence the decay.
    """
    torch.manual_seed(seed)
    tokens, feats = make_batch()
    model = tria_tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    decay = (lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))) if cosine else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    # Features always on (no CFG dropout) and no label smoothing: smoothing 0.1 puts a floor of
    # about 1.0 nat under the loss, which would hide how far it can fall on one batch.
    cfg = MaskConfig(p_cfg_dropout=0.0, label_smoothing=0.0, loss_normalization="masked")
    losses = []
    for step in range(steps):
        b = build_training_batch(tokens, None, torch.arange(B) + step * B, cfg)  # new masks every step
        logits = model(tokens, feats, b["codebook"], b["tokens_mask"], b["feats_mask"])
        out = masked_token_loss(logits, tokens, b["tokens_mask"], b["codebook"],
                                label_smoothing=cfg.label_smoothing, normalization=cfg.loss_normalization)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
        losses.append(out.loss.item())
    return model.eval(), losses


def regenerate(model: torch.nn.Module, iterations: int = 8) -> float:
    tokens, feats = make_batch()
    p = prompt_layout(tokens[:, :, :PREFIX], feats[:, :, PREFIX:])
    greedy = SamplerConfig.greedy(iterations)  # argmax tokens, no Gumbel noise, no CFG
    out = generate(model, p.tokens, p.feats, p.tokens_mask, p.feats_mask, config=greedy)
    assert torch.equal(out[:, :, :PREFIX], tokens[:, :, :PREFIX])
    return (out[:, :, PREFIX:] == tokens[:, :, PREFIX:]).float().mean().item()


@pytest.fixture
def one_thread():
    # The tiny model gains nothing from a second thread, and on a shared 2-core machine
    # OpenMP spin-waiting made the run 10x slower; one thread keeps it near 10 s.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_overfit_then_regenerate(one_thread):
    start = time.time()
    model, losses = overfit()
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert first > 5.0  # about ln(1024) = 6.9 at init
    assert last < first / 5, f"loss only fell from {first:.3f} to {last:.3f}"
    accuracy = regenerate(model)
    assert accuracy >= 0.9, f"greedy sampler reproduced only {accuracy:.1%} of the tokens"
    took = time.time() - start
    print(f"overfit: loss {first:.2f} -> {last:.3f}, regenerated {accuracy:.1%} in {took:.1f} s")
