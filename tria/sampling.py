"""Iterative masked decoding for TRIA (SPEC 6.1 prompt layout, 6.2 loop, 6.3 defaults).

Codebooks are generated coarse to fine. For codebook k and iteration i of I_k:

1. logits for the current buffer (doubled batch for classifier-free guidance);
2. keep codebook k, filter with top-k / top-p;
3. sample every masked position (argmax on the last iteration);
4. decide how many stay masked (cosine schedule);
5. re-mask the least confident positions (Gumbel noise annealed to 0, optional causal bias);
6. re-apply the constraints (no-feature frames and lower codebooks visible).

Each step is a small function here; `generate` strings them together.

Randomness never touches the global RNGs: the Gumbel noise comes from
`RandomState(seed_b + 10007 * k)` per example and codebook (as in the authors' code), and the
token draws from one `torch.Generator` per example seeded with `seed_b`. The authors draw tokens
from the global torch RNG after `util.seed(seed[0])`; a private generator makes a result depend
only on its own seed, not on what else ran in the process.

Notation: B batch, K codebooks, T frames, V entries per codebook, F rhythm bands.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SamplerConfig",
    "PromptInputs",
    "DecodeStep",
    "generate",
    "prompt_layout",
    "filter_logits",
    "sample_step",
    "schedule",
    "mask_by_confidence",
    "gumbel_noise",
    "guided_logits",
]

PerCodebook = Union[float, int, None, Sequence[Union[float, int, None]]]
GUMBEL_SEED_STRIDE = 10007  # seed of codebook k's Gumbel stream is seed_b + 10007 * k


@dataclass(frozen=True)
class SamplerConfig:
    """Decoding settings; every field is a scalar or a sequence of one value per codebook.

    The defaults are the ones the authors use for training-time samples (train.py / YAML,
    SPEC 6.3). Other presets: `authors_signature()` (the defaults of `TRIA.inference`) and
    `app()` (the Gradio UI).

    Attributes:
        iterations: decoding steps per codebook (at least 1).
        top_p: nucleus filtering, active only when 0 < top_p < 1; None = off.
        top_k: keep the k largest logits, active when 0 < top_k < V; None = off.
        temp: sampling temperature. 0 means argmax at every iteration (the authors' code turns
            0 into 1.0; here it is the greedy switch).
        mask_temp: scale of the Gumbel noise on confidences, annealed linearly to 0.
        guidance_scale: CFG weight w, logits = uncond + w (cond - uncond); None or 0 = off
            (a single conditional pass, as in the authors' code).
        causal_bias: bonus for unmasking earlier frames first; None or 0 = off.
    """

    iterations: int | Sequence[int] = 8
    top_p: PerCodebook = 0.85
    top_k: PerCodebook = None
    temp: PerCodebook = 1.0
    mask_temp: PerCodebook = 10.5
    guidance_scale: PerCodebook = 2.0
    causal_bias: PerCodebook = 1.0

    @classmethod
    def authors_signature(cls) -> "SamplerConfig":
        """Defaults of the authors' `TRIA.inference` signature: no top-p, no CFG, no causal bias."""
        return cls(top_p=1.0, top_k=None, guidance_scale=None, causal_bias=None)

    @classmethod
    def app(cls) -> "SamplerConfig":
        """Defaults of the authors' Gradio app: top-p off, CFG 2.0, causal bias 1.0."""
        return cls(top_p=None, top_k=None, guidance_scale=2.0, causal_bias=1.0)

    @classmethod
    def greedy(cls, iterations: int = 8) -> "SamplerConfig":
        """Deterministic decoding: argmax tokens, no mask noise, no CFG, no causal bias."""
        return cls(
            iterations=iterations, top_p=None, temp=0.0, mask_temp=0.0, guidance_scale=None, causal_bias=None
        )

    def per_codebook(self, n_codebooks: int) -> list[dict[str, Any]]:
        """One resolved settings dict per codebook (None turned into the 'off' value)."""
        cols = {name: _expand(getattr(self, name), n_codebooks, name) for name in self.__dataclass_fields__}
        out = []
        for k in range(n_codebooks):
            v = {name: col[k] for name, col in cols.items()}
            v["iterations"] = max(int(v["iterations"] or 1), 1)
            v["temp"] = 1.0 if v["temp"] is None else float(v["temp"])
            v["mask_temp"] = float(v["mask_temp"] or 0.0)
            v["causal_bias"] = float(v["causal_bias"] or 0.0)
            v["guidance_scale"] = float(v["guidance_scale"] or 0.0)
            if v["temp"] < 0 or v["mask_temp"] < 0 or v["causal_bias"] < 0:
                raise ValueError(f"codebook {k}: temp, mask_temp and causal_bias must be >= 0, got {v}")
            out.append(v)
        return out


def _expand(value: PerCodebook, n: int, name: str) -> list:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return list(value) * n
        if len(value) != n:
            raise ValueError(
                f"{name} must be a scalar or have {n} values (one per codebook), got {len(value)}"
            )
        return list(value)
    return [value] * n


# ----------------------------------------------------------------------------------------------
# Prompt layout (SPEC 6.1)


@dataclass
class PromptInputs:
    """Model inputs for "continue this timbre with that rhythm"; all (B, ...) tensors."""

    tokens: torch.Tensor  # (B, K, T) timbre tokens, then placeholders
    tokens_mask: torch.Tensor  # (B, K, T) True on the prefix
    feats: torch.Tensor  # (B, F, T) zeros on the prefix, rhythm features after it
    feats_mask: torch.Tensor  # (B, T) True after the prefix
    prefix_frames: int


def prompt_layout(
    timbre_tokens: torch.Tensor, rhythm_feats: torch.Tensor, placeholder: int = 0
) -> PromptInputs:
    """Lay out a prompt: timbre tokens as a visible prefix, then a hidden region with features.

    Args:
        timbre_tokens: (B, K, Tp) tokens of the timbre prompt (e.g. 172 frames for 2 s).
        rhythm_feats: (B, F, Tr) rhythm features already aligned to the Tr frames to generate.
        placeholder: token id written in the hidden region (never read by the model).

    Returns:
        `PromptInputs` over T = Tp + Tr frames: tokens_mask[:, :, t] = t < Tp and
        feats_mask[:, t] = t >= Tp.
    """
    if timbre_tokens.ndim != 3 or rhythm_feats.ndim != 3 or timbre_tokens.shape[0] != rhythm_feats.shape[0]:
        raise ValueError(
            f"need timbre_tokens (B, K, Tp) and rhythm_feats (B, F, Tr) with the same B, got "
            f"{tuple(timbre_tokens.shape)} and {tuple(rhythm_feats.shape)}"
        )
    B, K, Tp = timbre_tokens.shape
    Fb, Tr = rhythm_feats.shape[1:]
    if Tr < 1:
        raise ValueError("rhythm_feats must cover at least one frame to generate")
    device = timbre_tokens.device
    hidden = torch.full((B, K, Tr), placeholder, dtype=torch.long, device=device)  # (B, K, Tr)
    tokens = torch.cat([timbre_tokens.long(), hidden], dim=-1)  # (B, K, T)
    is_prefix = torch.arange(Tp + Tr, device=device) < Tp  # (T,)
    feats = torch.cat([rhythm_feats.new_zeros(B, Fb, Tp), rhythm_feats], dim=-1)  # (B, F, T)
    return PromptInputs(
        tokens=tokens,
        tokens_mask=is_prefix[None, None, :].expand(B, K, -1).clone(),
        feats=feats,
        feats_mask=(~is_prefix)[None, :].expand(B, -1).clone(),
        prefix_frames=Tp,
    )


# ----------------------------------------------------------------------------------------------
# Steps of the loop


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k and/or the nucleus top-p to -inf (the most likely one is kept).

    Args:
        logits: (..., V).
        top_k: active when 0 < top_k < V.
        top_p: active when 0 < top_p < 1; entries whose preceding-inclusive cumulative
            probability exceeds top_p are dropped.

    Returns:
        A filtered copy, same shape.
    """
    logits = logits.clone()
    V = logits.shape[-1]
    if top_k is not None and 0 < top_k < V:
        kth = logits.topk(int(top_k), dim=-1).values[..., -1:]  # (..., 1)
        logits[logits < kth] = float("-inf")
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum(dim=-1) > top_p  # (..., V)
        drop_sorted[..., 0] = False  # always keep the most likely entry
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
        logits[drop] = float("-inf")
    return logits


def sample_step(
    logits: torch.Tensor, temp: float, argmax: bool, generators: Sequence[torch.Generator] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick a token per position and report its probability (the confidence).

    Args:
        logits: (B, T, V) filtered logits.
        temp: temperature; <= 0 forces argmax.
        argmax: take the most likely token; its confidence is softmax(logits) without temperature.
        generators: one per example for the multinomial draws (required unless argmax).

    Returns:
        tokens (B, T) int64 and their probabilities (B, T).
    """
    if argmax or temp <= 0:
        tokens = logits.argmax(dim=-1)  # (B, T)
        return tokens, logits.softmax(dim=-1).gather(-1, tokens[..., None])[..., 0]
    if generators is None or len(generators) != logits.shape[0]:
        raise ValueError("sample_step needs one torch.Generator per example when not taking the argmax")
    probs = (logits / temp).softmax(dim=-1)  # (B, T, V)
    draws = [torch.multinomial(p, 1, generator=g)[:, 0] for p, g in zip(probs, generators)]  # B x (T,)
    tokens = torch.stack(draws)  # (B, T)
    return tokens, probs.gather(-1, tokens[..., None])[..., 0]


def schedule(
    iteration: int, iterations: int, n_initial: torch.Tensor, n_masked: torch.Tensor
) -> torch.Tensor:
    """How many positions stay masked after `iteration` (0-based) of `iterations`.

    floor(cos(pi s / 2) * n_initial) with s = (i + 1) / I, computed in float32 like the authors.
    Before the last iteration it is clamped to [1, n_masked - 1]: every step unmasks at least
    one position and at least one waits for the next step. At the last step it is 0.

    Args:
        iteration: i.
        iterations: I.
        n_initial: (B,) masked positions of this codebook before its first iteration.
        n_masked: (B,) masked positions now.

    Returns:
        (B,) int64.
    """
    s = (iteration + 1) / iterations
    ratio = torch.tensor(s, dtype=torch.float32, device=n_initial.device)
    ratio = (ratio * math.pi / 2).cos().clamp(1e-10, 1.0)  # float32, like the training schedule
    target = torch.floor(ratio * n_initial).long()  # (B,)
    if iteration < iterations - 1:
        target = torch.minimum(n_masked - 1, target).clamp_min(1)
    return target


def gumbel_noise(states: Sequence[np.random.RandomState], like: torch.Tensor) -> torch.Tensor:
    """Gumbel noise -log(-log u), u ~ U(1e-6, 1 - 1e-6), one stream per example.

    Args:
        states: one RandomState per example.
        like: (B, T) tensor whose dtype and device the noise takes; u is cast before the logs,
            as in the authors' code, so the scores match theirs bit for bit.

    Returns:
        (B, T) noise.
    """
    u = np.stack([s.uniform(1e-6, 1 - 1e-6, like.shape[-1]) for s in states])  # (B, T) float64
    u = torch.from_numpy(u).to(like)
    return -torch.log(-torch.log(u))


def mask_by_confidence(
    probs: torch.Tensor,
    masked: torch.Tensor,
    n_keep_masked: torch.Tensor,
    noise: torch.Tensor,
    noise_scale: float,
    causal_bias: float = 0.0,
) -> torch.Tensor:
    """Unmask the most confident of the masked positions, keeping `n_keep_masked` masked.

    score = log(max(prob, 1e-12)) + noise_scale * noise (+ causal_bias * (1 - (t + 1) / T)).

    Args:
        probs: (B, T) confidence of the token just sampled at each position.
        masked: (B, T) bool, positions that were masked (the only ones that can change).
        n_keep_masked: (B,) how many of them stay masked.
        noise: (B, T) Gumbel noise.
        noise_scale: mask temperature for this step.
        causal_bias: favours earlier frames; T is the full buffer length.

    Returns:
        (B, T) bool, True = visible.
    """
    B, T = probs.shape
    score = probs.clamp_min(1e-12).log() + noise_scale * noise  # (B, T)
    if causal_bias > 0:
        score = score + causal_bias * (1 - (torch.arange(T, device=probs.device, dtype=score.dtype) + 1) / T)
    n_unmask = (masked.sum(dim=-1) - n_keep_masked).clamp_min(0)  # (B,)
    order = score.masked_fill(~masked, float("-inf")).argsort(dim=-1, descending=True)  # (B, T)
    chosen_sorted = torch.arange(T, device=probs.device)[None, :] < n_unmask[:, None]  # (B, T)
    chosen = torch.zeros_like(masked).scatter(-1, order, chosen_sorted)  # back to frame order
    return ~masked | chosen


@torch.no_grad()
def guided_logits(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    feats: torch.Tensor,
    codebook: int,
    tokens_mask: torch.Tensor,
    feats_mask: torch.Tensor,
    lengths: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance: uncond + w (cond - uncond) from one doubled-batch pass.

    Both halves see the same tokens; the second half has every feature masked off.

    Returns:
        (B, K, T, V) guided logits.
    """
    B = tokens.shape[0]
    cb = torch.full((2 * B,), codebook, dtype=torch.long, device=tokens.device)
    both = model(
        torch.cat([tokens, tokens]), torch.cat([feats, feats]), cb, torch.cat([tokens_mask, tokens_mask]),
        torch.cat([feats_mask, torch.zeros_like(feats_mask)]), lengths=torch.cat([lengths, lengths]),
    )  # (2B, K, T, V)
    cond, uncond = both[:B], both[B:]
    return uncond + guidance_scale * (cond - uncond)


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass
class DecodeStep:
    """What `generate` reports to its callback after every iteration (tensors are clones)."""

    codebook: int
    iteration: int
    iterations: int
    tokens: torch.Tensor  # (B, K, T)
    tokens_mask: torch.Tensor  # (B, K, T) True = visible
    n_masked_before: torch.Tensor  # (B,) masked positions of `codebook` before this step
    n_target: torch.Tensor  # (B,) positions meant to stay masked after it


def _seeds(seed: int | Sequence[int] | torch.Tensor, B: int) -> list[int]:
    """One seed per example; each must leave room for the Gumbel offsets within [0, 2**32)."""
    if isinstance(seed, torch.Tensor):
        seed = seed.tolist()
    seeds = [int(s) for s in seed] if isinstance(seed, (list, tuple)) else [int(seed)]
    if len(seeds) == 1:
        seeds = seeds * B
    if len(seeds) != B:
        raise ValueError(f"seed must be one int or one per example ({B}), got {len(seeds)}")
    if any(not 0 <= s < 2**32 - GUMBEL_SEED_STRIDE * 16 for s in seeds):
        raise ValueError(f"seeds must be in [0, 2**32 - {GUMBEL_SEED_STRIDE * 16}), got {seeds}")
    return seeds


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    feats: torch.Tensor,
    tokens_mask: torch.Tensor,
    feats_mask: torch.Tensor,
    lengths: torch.Tensor | None = None,
    config: SamplerConfig = SamplerConfig(),
    seed: int | Sequence[int] = 0,
    callback: Callable[[DecodeStep], None] | None = None,
) -> torch.Tensor:
    """Fill every hidden token, codebook by codebook (SPEC 6.2).

    Args:
        model: a `TRIA` (run in eval mode here; its previous mode is restored).
        tokens: (B, K, T) buffer; hidden entries may hold any valid id.
        feats: (B, F, T') rhythm features (resampled to T with the model's `interp`).
        tokens_mask: (B, K, T) bool, True = visible (kept as is).
        feats_mask: (B, T') bool, True where features guide generation.
        lengths: (B,) valid frames, or None for all T. Frames past it are left untouched.
        config: decoding settings.
        seed: one int, or one per example.
        callback: called with a `DecodeStep` after every iteration (progress, tests).

    Returns:
        (B, K, T) int64 tokens with every hidden position within `lengths` filled.
    """
    B, K, T = tokens.shape
    device = next(model.parameters()).device
    settings = config.per_codebook(K)
    seeds = _seeds(seed, B)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    tokens = tokens.to(device).long().clone()
    lengths = torch.full((B,), T, device=device) if lengths is None else lengths.to(device).long().clamp(0, T)
    valid = torch.arange(T, device=device)[None, :] < lengths[:, None]  # (B, T)
    interp = getattr(getattr(model, "cfg", None), "interp", "nearest")
    feats = F.interpolate(feats.to(device).float(), size=T, mode=interp)  # (B, F, T)
    feats_mask = F.interpolate(feats_mask.to(device)[:, None].float(), size=T, mode="nearest")[:, 0] > 0.5
    feats_mask = feats_mask & valid  # (B, T): invalid frames get no features
    tokens_mask = tokens_mask.to(device).bool() | ~valid[:, None, :]  # invalid frames count as visible
    n_initial = (~tokens_mask).sum(dim=-1)  # (B, K)

    was_training = model.training
    model.eval()
    try:
        for k, opts in enumerate(settings):
            states = [np.random.RandomState(s + GUMBEL_SEED_STRIDE * k) for s in seeds]
            for i in range(opts["iterations"]):
                tokens, tokens_mask, step = _decode_step(
                    model, tokens, feats, tokens_mask, feats_mask, lengths, k, i, opts, n_initial[:, k],
                    states, generators,
                )
                if callback is not None:
                    callback(step)
    finally:
        model.train(was_training)
    return tokens


def _decode_step(
    model, tokens, feats, tokens_mask, feats_mask, lengths, k, i, opts, n_initial, states, generators
):
    """One iteration for codebook k: predict, sample, keep the confident ones, re-apply constraints."""
    B, K, T = tokens.shape
    I = opts["iterations"]
    last = i == I - 1
    if opts["guidance_scale"]:
        w = opts["guidance_scale"]
        logits = guided_logits(model, tokens, feats, k, tokens_mask, feats_mask, lengths, w)  # (B, K, T, V)
    else:
        cb = torch.full((B,), k, dtype=torch.long, device=tokens.device)
        logits = model(tokens, feats, cb, tokens_mask, feats_mask, lengths=lengths)  # (B, K, T, V)
    logits = filter_logits(logits[:, k], opts["top_k"], opts["top_p"])  # (B, T, V)
    sampled, probs = sample_step(logits, opts["temp"], argmax=last, generators=generators)  # (B, T) x2

    masked = ~tokens_mask[:, k]  # (B, T)
    tokens = tokens.clone()
    tokens[:, k] = torch.where(masked, sampled, tokens[:, k])  # write into every masked slot

    n_masked = masked.sum(dim=-1)  # (B,)
    n_target = schedule(i, I, n_initial, n_masked)  # (B,)
    s = (i + 1) / I
    visible_k = mask_by_confidence(
        probs, masked, n_target, gumbel_noise(states, probs), opts["mask_temp"] * (1 - s), opts["causal_bias"]
    )  # (B, T)

    tokens_mask = tokens_mask.clone()
    tokens_mask[:, k] = visible_k
    # Frames without features (prefix, invalid) are never generated. The authors force them
    # visible in every codebook at once; here only codebooks <= k, so that a hidden slot without
    # features in a higher codebook still gets sampled in its own turn. Identical for prompts
    # where hidden == has features (the layout of SPEC 6.1 and training).
    tokens_mask[:, : k + 1] |= ~feats_mask[:, None, :]
    tokens_mask[:, :k] = True
    step = DecodeStep(k, i, I, tokens.clone(), tokens_mask.clone(), n_masked, n_target)
    return tokens, tokens_mask, step
