"""Coarse/fine codebook curricula: which codebooks an example may train, and how often each is drawn.

Two independent knobs (ARCHITECTURE "Quality tiers and the codebook curriculum"):

* **Tier -> allowed codebooks.** Separated audio (Demucs) has artefacts in the fine detail, so by
  default it trains only the first ``n_coarse`` codebooks; isolated and synthetic drums train all 9.
* **Schedule over steps.** The weight of the fine codebooks (index >= ``n_coarse``) relative to the
  coarse ones moves linearly from ``fine_weight_start`` at ``start_step`` to ``fine_weight_end`` at
  ``end_step``. ``uniform`` (1 -> 1) is the authors' ``randint(0, 9)``; ``coarse_first`` ramps the fine
  codebooks in; ``fine_late`` switches them on at one step.

The masking module draws each example's codebook among its allowed ones in proportion to these
weights (``tria.masking.draw_codebooks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

TIERS = ("isolated", "separated", "synthetic")


@dataclass(frozen=True)
class CurriculumConfig:
    n_coarse: int = 4  # codebooks 0..n_coarse-1 are "coarse"
    # how many codebooks (from 0) each tier may train; 9 = all
    tier_codebooks: dict = field(default_factory=lambda: {"isolated": 9, "separated": 4, "synthetic": 9})
    fine_weight_start: float = 1.0
    fine_weight_end: float = 1.0
    start_step: int = 0
    end_step: int = 0
    n_codebooks: int = 9

    def __post_init__(self) -> None:
        if not 1 <= self.n_coarse <= self.n_codebooks:
            raise ValueError(f"n_coarse must be in [1, {self.n_codebooks}], got {self.n_coarse}")
        unknown = set(self.tier_codebooks) - set(TIERS)
        if unknown:
            raise ValueError(f"tier_codebooks has unknown tiers {sorted(unknown)}; tiers are {TIERS}")
        for tier, n in self.tier_codebooks.items():
            if not 1 <= int(n) <= self.n_codebooks:
                raise ValueError(f"tier_codebooks[{tier!r}] must be in [1, {self.n_codebooks}], got {n}")
        if min(self.fine_weight_start, self.fine_weight_end) < 0:
            raise ValueError("fine weights must be >= 0")
        if self.end_step < self.start_step:
            raise ValueError(f"end_step ({self.end_step}) must be >= start_step ({self.start_step})")

    @classmethod
    def uniform(cls, **kw) -> "CurriculumConfig":
        return cls(**kw)

    @classmethod
    def coarse_first(cls, end_step: int = 10_000, **kw) -> "CurriculumConfig":
        return cls(**{"fine_weight_start": 0.0, "fine_weight_end": 1.0, "start_step": 0, "end_step": end_step, **kw})

    @classmethod
    def fine_late(cls, start_step: int = 10_000, **kw) -> "CurriculumConfig":
        return cls(**{"fine_weight_start": 0.0, "fine_weight_end": 1.0, "start_step": start_step,
                      "end_step": start_step, **kw})


def allowed_codebooks(tiers: list[str], cfg: CurriculumConfig) -> torch.Tensor:
    """(B, K) bool: example b may train codebook k iff k < tier_codebooks[tier_b] (9 for unlisted tiers)."""
    limits = torch.tensor([int(cfg.tier_codebooks.get(t, cfg.n_codebooks)) for t in tiers])  # (B,)
    return torch.arange(cfg.n_codebooks)[None, :] < limits[:, None]


def fine_weight(step: int, cfg: CurriculumConfig) -> float:
    """Weight of each fine codebook at ``step`` (coarse ones weigh 1)."""
    if step <= cfg.start_step:
        return cfg.fine_weight_start
    if step >= cfg.end_step:
        return cfg.fine_weight_end
    frac = (step - cfg.start_step) / (cfg.end_step - cfg.start_step)
    return cfg.fine_weight_start + frac * (cfg.fine_weight_end - cfg.fine_weight_start)


def codebook_weights(step: int, cfg: CurriculumConfig) -> torch.Tensor:
    """(K,) float64 draw weights at ``step``. A fine weight of 0 is safe: every tier's allowed set starts
    at codebook 0, which always weighs 1."""
    w = torch.ones(cfg.n_codebooks, dtype=torch.float64)
    w[cfg.n_coarse:] = fine_weight(step, cfg)
    return w
