"""The TRIA training objective as pure batched functions (SPEC 4.1, steps 4-9).

One call, `build_training_batch`, turns tokens and per-example ids into everything a training
step needs (which codebook to train, the token and feature masks, the CFG dropout), and
`masked_token_loss` scores the model's logits. All randomness is keyed to the example id
`idx_i` through `numpy.random.RandomState`, exactly as the authors do, so a given id always
gets the same masks on any machine, rank or batch size.

Two quirks of the authors' code are kept by default and can be switched off:

* `correlated_seeds=True`: the span and the random mask each re-seed a fresh
  `RandomState(idx_i)`, so their first draws equal the draw that set the mask ratio
  (SPEC 9.1.1: a small mask ratio always comes with a long span).
* `loss_normalization="authors"`: the loss is divided by B*K*T, not by the number of target
  tokens (SPEC 9.1.3). `"masked"` divides by the token count and returns it, so a trainer can
  normalise over the whole accumulation window and all ranks (STYLE habit 11).

Notation: B batch, K codebooks, T frames, V entries per codebook.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "MaskConfig",
    "LossOutput",
    "build_training_batch",
    "masked_token_loss",
    "cosine_schedule",
    "draw_codebooks",
    "span_mask",
    "random_mask",
    "combine_masks",
]

LossNormalization = Literal["authors", "masked"]


@dataclass(frozen=True)
class MaskConfig:
    """Settings of the masked-token objective.

    Attributes:
        min_span_prop: shortest generated span, as a fraction of the valid length.
        max_span_prop: longest generated span. The configs use (0.5, 0.75).
        p_cfg_dropout: features are kept iff u > p_cfg_dropout. The paper configs set 0.8
            (features present in only 20 % of items, SPEC 9.1.2); the release configs set 0.2.
        n_codebooks: K.
        correlated_seeds: reproduce the authors' re-seeding (SPEC 9.1.1). False draws the main,
            span and random-mask values from three independent streams derived from idx.
        label_smoothing: of the cross-entropy.
        loss_normalization: "authors" (mean over all B*K*T entries) or "masked" (per target token).
    """

    min_span_prop: float = 0.5
    max_span_prop: float = 0.75
    p_cfg_dropout: float = 0.8
    n_codebooks: int = 9
    correlated_seeds: bool = True
    label_smoothing: float = 0.1
    loss_normalization: LossNormalization = "authors"

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_span_prop <= self.max_span_prop <= 1.0:
            raise ValueError(
                "need 0 <= min_span_prop <= max_span_prop <= 1, "
                f"got {self.min_span_prop}, {self.max_span_prop}"
            )
        if not 0.0 <= self.p_cfg_dropout <= 1.0:
            raise ValueError(f"p_cfg_dropout must be in [0, 1], got {self.p_cfg_dropout}")
        if self.loss_normalization not in ("authors", "masked"):
            raise ValueError(
                f"loss_normalization must be 'authors' or 'masked', got {self.loss_normalization!r}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


# ----------------------------------------------------------------------------------------------
# Random streams


def _check_ids(idx: torch.Tensor | Sequence[int], n: int) -> list[int]:
    ids = idx.tolist() if isinstance(idx, torch.Tensor) else [int(i) for i in idx]
    if len(ids) != n:
        raise ValueError(f"idx has {len(ids)} entries but the batch has {n}")
    if any(not 0 <= i < 2**32 for i in ids):
        raise ValueError("idx values must be integers in [0, 2**32) to seed numpy's RandomState")
    return ids


def _reseed(rs: np.random.RandomState, idx: int, which: int, correlated: bool) -> np.random.RandomState:
    """Re-seed `rs` for one draw family of example idx: 0 = main (t, codebook, u_cfg), 1 = span,
    2 = random mask, and return it.

    Correlated: every family starts from `seed(idx)`, i.e. the authors' fresh `RandomState(idx)`.
    Otherwise the key is [idx, which], a different Mersenne-Twister stream per family.
    Re-seeding one object costs about 1 us where building a new RandomState costs about 100 us,
    which matters at B = 24 and three streams per example.
    """
    rs.seed(idx if correlated else [idx, which])
    return rs


# ----------------------------------------------------------------------------------------------
# Pieces (each usable and testable on its own)


def cosine_schedule(t: torch.Tensor) -> torch.Tensor:
    """MaskGIT schedule: mask proportion cos(pi t / 2), clamped to [1e-10, 1]. Computed in the
    input's dtype; the authors use float32, and the exact values decide the random mask."""
    return (t * math.pi / 2).cos().clamp(1e-10, 1.0)


def _codebook_probs(allowed: torch.Tensor | None, weights, B: int, K: int) -> np.ndarray:
    """(B, K) unnormalised draw weights = weights * allowed, validated."""
    allow = np.ones((B, K), bool) if allowed is None else np.asarray(torch.as_tensor(allowed).cpu(), bool)
    w = np.ones(K) if weights is None else np.asarray(torch.as_tensor(weights, dtype=torch.float64).cpu())
    if allow.shape != (B, K):
        raise ValueError(f"allowed must be (B, K) = {(B, K)}, got {allow.shape}")
    if w.shape != (K,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be {K} finite non-negative numbers, got {w.tolist()}")
    p = w[None, :] * allow  # (B, K)
    empty = np.flatnonzero(p.sum(axis=1) <= 0)
    if empty.size:
        raise ValueError(f"example {empty[0]} has no allowed codebook with positive weight")
    return p


def _draw_codebook(rs: np.random.RandomState, p: np.ndarray) -> int:
    """One codebook from weights p (K,): randint over the members when they weigh the same (the
    authors' `randint(0, K)` when all are allowed), else one uniform through the inverse CDF."""
    members = np.flatnonzero(p > 0)
    if np.all(p[members] == p[members[0]]):
        return int(members[rs.randint(0, members.size, (1,))[0]])
    cdf = np.cumsum(p) / p.sum()
    return min(int(np.searchsorted(cdf, rs.uniform(), side="right")), int(members[-1]))


def draw_codebooks(
    states: Sequence[np.random.RandomState],
    allowed: torch.Tensor | None = None,
    weights: torch.Tensor | Sequence[float] | None = None,
    n_codebooks: int = 9,
) -> torch.Tensor:
    """Draw one codebook per example, among its allowed codebooks, proportionally to `weights`.

    When an example's allowed codebooks all have the same weight the draw is
    `randint(0, n_allowed)` over them, so with all codebooks allowed and uniform weights it is the
    authors' `randint(0, K)` exactly. Otherwise one `uniform()` picks by inverse CDF.

    Args:
        states: one RandomState per example (advanced by the draw).
        allowed: (B, K) bool, or None for all allowed.
        weights: (K,) non-negative, or None for uniform.
        n_codebooks: K.

    Returns:
        (B,) int64 codebook indices.
    """
    p = _codebook_probs(allowed, weights, len(states), n_codebooks)
    return torch.tensor([_draw_codebook(s, p[i]) for i, s in enumerate(states)], dtype=torch.long)


def span_mask(
    lengths: Sequence[int], n_frames: int, ids: Sequence[int], cfg: MaskConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """One contiguous span per example, in every codebook: the region to generate.

    prop ~ U(min, max) (or min when they are equal), span = int(prop * len), start ~
    randint(0, max(len - span, 1)); prop >= 1 covers the whole valid length.

    Returns:
        (B, T) bool, False inside the span (authors' convention), and (B,) float64 props.
    """
    mask = torch.ones(len(ids), n_frames, dtype=torch.bool)
    props = torch.zeros(len(ids), dtype=torch.float64)
    rs = np.random.RandomState(0)
    for i, (idx, length) in enumerate(zip(ids, lengths)):
        if length <= 0:
            continue  # nothing valid to generate
        s = _reseed(rs, idx, 1, cfg.correlated_seeds)
        lo, hi = cfg.min_span_prop, cfg.max_span_prop
        prop = s.uniform(lo, hi) if lo < hi else lo
        props[i] = prop
        if prop >= 1.0:
            mask[i, :length] = False
            continue
        span = int(prop * length)
        if span > 0:
            start = s.randint(0, max(length - span, 1))
            mask[i, start : start + span] = False
    return mask, props


def random_mask(
    mask_prop: torch.Tensor, n_codebooks: int, n_frames: int, ids: Sequence[int], cfg: MaskConfig
) -> torch.Tensor:
    """Per example, entry (k, t) is kept (True) iff u[k, t] > p, u ~ rand(K, T) from its own stream.

    Returns:
        (B, K, T) bool, True = kept visible.
    """
    rs = np.random.RandomState(0)
    rows = [
        torch.from_numpy(_reseed(rs, idx, 2, cfg.correlated_seeds).rand(n_codebooks, n_frames)) > float(p)
        for idx, p in zip(ids, mask_prop.tolist())
    ]
    return torch.stack(rows) if rows else torch.ones(0, n_codebooks, n_frames, dtype=torch.bool)


def combine_masks(span: torch.Tensor, codebook: torch.Tensor, rand_keep: torch.Tensor) -> torch.Tensor:
    """Build the visible-token mask (no leak of higher codebooks, as in the configs).

    Outside the span everything is visible (timbre context). Inside it, codebooks below the
    chosen one are visible, the chosen one is visible where `rand_keep` is True, higher ones are
    hidden.

    Args:
        span: (B, T) bool, False inside the span.
        codebook: (B,) chosen codebook.
        rand_keep: (B, K, T) bool.

    Returns:
        (B, K, T) bool, True = visible.
    """
    K = rand_keep.shape[1]
    k = torch.arange(K, device=codebook.device)[None, :, None]  # (1, K, 1)
    cb = codebook[:, None, None]  # (B, 1, 1)
    inside = (k < cb) | ((k == cb) & rand_keep)  # (B, K, T)
    return inside | span[:, None, :]


# ----------------------------------------------------------------------------------------------
# The whole of steps 4-8


def build_training_batch(
    tokens: torch.Tensor,
    lengths: torch.Tensor | None,
    idx: torch.Tensor | Sequence[int],
    cfg: MaskConfig = MaskConfig(),
    allowed: torch.Tensor | None = None,
    weights: torch.Tensor | Sequence[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Draw the codebook, masks and CFG dropout for one training batch.

    Per example i, `RandomState(idx_i)` gives in order: u_t (so t = u_t and the mask proportion
    p = cos(pi t / 2)), the codebook, then u_cfg. The span and random masks use their own
    streams (a fresh `RandomState(idx_i)` each when `cfg.correlated_seeds`).

    Args:
        tokens: (B, K, T) target tokens (only the shape and device are used).
        lengths: (B,) valid frame counts, or None for all T.
        idx: (B,) non-negative example ids, unique per step (the authors add a running offset).
        cfg: objective settings.
        allowed: (B, K) bool, codebooks each example may train (curriculum), None = all.
        weights: (K,) relative codebook weights, None = uniform.

    Returns:
        dict of tensors on `tokens.device`:
            "codebook" (B,) int64, "t" (B,) float32, "mask_prop" (B,) float32,
            "span_prop" (B,) float64, "span_mask" (B, T) bool (False inside the span),
            "random_mask" (B, K, T) bool (True = kept), "tokens_mask" (B, K, T) bool
            (True = visible), "feats_mask" (B, T) bool (True = features supplied),
            "cfg_keep" (B,) bool, "lengths" (B,) int64.
    """
    if tokens.ndim != 3 or tokens.shape[1] != cfg.n_codebooks:
        raise ValueError(f"tokens must be (B, {cfg.n_codebooks}, T), got {tuple(tokens.shape)}")
    B, K, T = tokens.shape
    ids = _check_ids(idx, B)
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long)
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths must be (B,) = ({B},), got {tuple(lengths.shape)}")
    lens = lengths.detach().long().clamp(0, T).cpu()

    probs = _codebook_probs(allowed, weights, B, K)  # (B, K)
    u_t, cb, u_cfg = np.zeros(B), np.zeros(B, np.int64), np.zeros(B)
    rs = np.random.RandomState(0)
    for i, example_id in enumerate(ids):  # the authors' order of draws on the main stream
        _reseed(rs, example_id, 0, cfg.correlated_seeds)
        u_t[i] = rs.uniform(0, 1, (1,))[0]
        cb[i] = _draw_codebook(rs, probs[i])
        u_cfg[i] = rs.uniform(0, 1)
    t = torch.from_numpy(u_t).float()  # (B,)
    mask_prop = cosine_schedule(t)  # (B,) float32, as the authors compute it
    codebook = torch.from_numpy(cb)  # (B,)
    cfg_keep = torch.from_numpy(u_cfg > cfg.p_cfg_dropout)  # (B,)

    span, span_prop = span_mask(lens.tolist(), T, ids, cfg)  # (B, T), (B,)
    rand_keep = random_mask(mask_prop, K, T, ids, cfg)  # (B, K, T)
    tokens_mask = combine_masks(span, codebook, rand_keep)  # (B, K, T)
    feats_mask = ~span & cfg_keep[:, None]  # (B, T): features only inside the span, if kept

    out = dict(
        codebook=codebook, t=t, mask_prop=mask_prop, span_prop=span_prop, span_mask=span,
        random_mask=rand_keep, tokens_mask=tokens_mask, feats_mask=feats_mask, cfg_keep=cfg_keep,
        lengths=lens,
    )
    return {k: v.to(tokens.device) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Step 9: the loss


@dataclass
class LossOutput:
    """Result of `masked_token_loss`.

    Attributes:
        loss: scalar to back-propagate, normalised as requested.
        loss_sum: scalar, sum of the cross-entropy over target tokens (with grad).
        n_tokens: scalar int64, number of target tokens (masked, chosen codebook, valid frames).
        codebook_loss_sum: (K,) detached loss sums per codebook.
        codebook_count: (K,) int64 target-token counts per codebook.
        codebook_correct: (K,) int64 argmax hits per codebook.
    """

    loss: torch.Tensor
    loss_sum: torch.Tensor
    n_tokens: torch.Tensor
    codebook_loss_sum: torch.Tensor
    codebook_count: torch.Tensor
    codebook_correct: torch.Tensor

    def codebook_metrics(self) -> dict[str, float]:
        """Per-codebook mean loss and accuracy for codebooks that had targets (for logging)."""
        out = {}
        for k in torch.nonzero(self.codebook_count).flatten().tolist():
            n = self.codebook_count[k].item()
            out[f"loss/codebook_{k}"] = self.codebook_loss_sum[k].item() / n
            out[f"acc/codebook_{k}"] = self.codebook_correct[k].item() / n
        return out


def masked_token_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    tokens_mask: torch.Tensor,
    codebook: torch.Tensor,
    lengths: torch.Tensor | None = None,
    label_smoothing: float = 0.1,
    normalization: LossNormalization = "authors",
) -> LossOutput:
    """Cross-entropy on the chosen codebook's hidden tokens within the valid length.

    Only the chosen codebook's slice of the logits is scored; the authors score all K and
    multiply by a mask that is zero elsewhere, which gives the same value at 9x the cost.

    Args:
        logits: (B, K, T, V).
        tokens: (B, K, T) targets.
        tokens_mask: (B, K, T) bool, True = visible (not a target).
        codebook: (B,) the codebook trained per example.
        lengths: (B,) valid frames, or None for all T.
        label_smoothing: of the cross-entropy (0.1 in the authors' training).
        normalization: "authors" divides the summed loss by B*K*T (SPEC 4.1 step 9);
            "masked" divides by the number of target tokens (at least 1).

    Returns:
        A `LossOutput`.
    """
    if logits.ndim != 4 or logits.shape[:3] != tokens.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be (B, K, T, V) with tokens {tuple(tokens.shape)}"
        )
    if normalization not in ("authors", "masked"):
        raise ValueError(f"normalization must be 'authors' or 'masked', got {normalization!r}")
    B, K, T, V = logits.shape
    rows = torch.arange(B, device=logits.device)
    cb = codebook.to(logits.device).long()
    chosen = logits[rows, cb]  # (B, T, V)
    target = tokens[rows, cb].long()  # (B, T)
    is_target = ~tokens_mask[rows, cb].bool()  # (B, T)
    if lengths is not None:
        is_target &= torch.arange(T, device=logits.device)[None, :] < lengths.to(logits.device)[:, None]

    ce = F.cross_entropy(
        chosen.reshape(B * T, V).float(),  # (B*T, V); float32 even under autocast
        target.reshape(B * T),
        reduction="none",
        label_smoothing=label_smoothing,
    ).view(B, T)  # (B, T)
    ce = ce * is_target
    loss_sum = ce.sum()
    n_tokens = is_target.sum()
    denom = float(B * K * T) if normalization == "authors" else n_tokens.clamp_min(1)
    with torch.no_grad():
        hits = (chosen.argmax(dim=-1) == target) & is_target  # (B, T)
        zeros = torch.zeros(K, device=logits.device)
        per_loss = zeros.index_add(0, cb, ce.detach().sum(dim=1))  # (K,)
        per_count = zeros.long().index_add(0, cb, is_target.sum(dim=1))  # (K,)
        per_hits = zeros.long().index_add(0, cb, hits.sum(dim=1))  # (K,)
    return LossOutput(loss_sum / denom, loss_sum, n_tokens, per_loss, per_count, per_hits)
