"""TRIA: a masked transformer over DAC codec tokens, conditioned on rhythm features.

Read top to bottom: RoPE helpers, attention, MLP, block, then `TRIA` and the named builders.
Every constant follows SPEC.md section 3. Module and parameter names mirror the authors' code
(`adapter`, `in_proj`, `backbone.layers.N.self_attn.q_proj`, `tokens_emb`, `head`, ...) so that
their state dicts load into this module unchanged.

Notation: B batch, K codebooks, V entries per codebook, T token frames, T' feature frames,
F rhythm bands, C channels, H heads, D head dim.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ModelConfig", "TRIA", "count_parameters", "tria_small", "tria_student", "tria_tiny"]


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of `TRIA` (SPEC 3.1).

    Attributes:
        n_channels: model width C.
        n_layers: number of transformer blocks.
        n_heads: attention heads; C must be divisible by it and the head dim must be even (RoPE).
        mlp_mult: MLP hidden width is `mlp_mult * C`.
        p_dropout: dropout on attention probabilities, attention output and MLP output (train only).
        n_feats: number of rhythm bands F.
        n_codebooks: K, residual codebooks of the codec.
        codebook_size: V, entries per codebook.
        max_len: RoPE cache length; longer sequences (registers included) are rejected.
        bias: bias of the feature `adapter` and the fusion `in_proj` only (attention never has one,
            the MLP always has one), as in the authors' code.
        qk_norm: RMS-normalise queries and keys per head (after RoPE) with learned gains.
        share_emb: tie the token embedding to the output head.
        n_registers: learned per-codebook vectors prepended to the sequence (0 = off).
        p_token_dropout: in training, zero whole frames of the codebooks below the current one.
        interp: how features are resampled to T frames ("nearest" or "linear").
    """

    n_channels: int
    n_layers: int
    n_heads: int
    mlp_mult: int = 4
    p_dropout: float = 0.0
    n_feats: int = 2
    n_codebooks: int = 9
    codebook_size: int = 1024
    max_len: int = 1000
    bias: bool = True
    qk_norm: bool = True
    share_emb: bool = True
    n_registers: int = 0
    p_token_dropout: float = 0.0
    interp: Literal["nearest", "linear"] = "nearest"

    def __post_init__(self) -> None:
        if self.n_channels % self.n_heads != 0:
            raise ValueError(f"n_channels {self.n_channels} is not divisible by n_heads {self.n_heads}")
        if (self.n_channels // self.n_heads) % 2 != 0:
            raise ValueError("head dim n_channels // n_heads must be even for RoPE")
        if self.interp not in ("nearest", "linear"):
            raise ValueError(f"interp must be 'nearest' or 'linear', got {self.interp!r}")
        for name in ("n_layers", "n_feats", "n_codebooks", "codebook_size", "max_len", "mlp_mult"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_registers < 0:
            raise ValueError(f"n_registers must be >= 0, got {self.n_registers}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Rotary position embedding (interleaved pairs)


def rope_cache(max_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (max_len, D/2), float32; pair i turns by pos * 10000^(-2i/D)."""
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (L, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2i, 2i+1) of x (B, H, T, D) by the first T rows of cos/sin."""
    B, H, T, D = x.shape
    pairs = x.reshape(B, H, T, D // 2, 2)  # (B, H, T, D/2, 2)
    x1, x2 = pairs[..., 0], pairs[..., 1]  # (B, H, T, D/2) each
    c, s = cos[:T].to(x.dtype), sin[:T].to(x.dtype)  # (T, D/2): float32 cache cast to activations
    out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)  # (B, H, T, D/2, 2)
    return out.reshape(B, H, T, D)


class QKNorm(nn.Module):
    """Per-head RMS norm of queries and keys with learned per-dimension gains (eps 1e-6)."""

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.g_q = nn.Parameter(torch.ones(head_dim))
        self.g_k = nn.Parameter(torch.ones(head_dim))

    def _rms(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return x * x.pow(2).mean(dim=-1, keepdim=True).add(self.eps).rsqrt() * gain

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._rms(q, self.g_q), self._rms(k, self.g_k)


# ----------------------------------------------------------------------------------------------
# Transformer block


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention: bias-free projections, RoPE, then QK-norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C = cfg.n_channels
        self.n_heads, self.head_dim, self.p_dropout = cfg.n_heads, C // cfg.n_heads, cfg.p_dropout
        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = nn.Linear(C, C, bias=False)
        self.v_proj = nn.Linear(C, C, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)
        self.o_dropout = nn.Dropout(cfg.p_dropout)
        self.qk_norm = QKNorm(self.head_dim) if cfg.qk_norm else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self, x: torch.Tensor, attend: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """x (B, T, C); attend (B, 1, 1, T) bool, True at keys that may be attended to."""
        B, T, C = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        # The authors rotate first and normalise after; the RMS norm is rotation-invariant but the
        # learned per-dimension gains are not, so the order matters for loading their weights.
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, k)
        p = self.p_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.o_dropout(self.o_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C, hidden = cfg.n_channels, cfg.n_channels * cfg.mlp_mult
        # Always with bias (the block's `bias` flag is ignored here in the authors' code).
        # Kept as `mlp.mlp.N` so the authors' parameter names load unchanged.
        self.mlp = nn.Sequential(
            nn.Linear(C, hidden), nn.GELU(), nn.Linear(hidden, C), nn.Dropout(cfg.p_dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class Block(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x)); padded frames are zeroed."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_1 = nn.LayerNorm(cfg.n_channels)
        self.self_attn = SelfAttention(cfg)
        self.norm_2 = nn.LayerNorm(cfg.n_channels)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, attend: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """x (B, T, C); valid (B, T, 1) bool; attend (B, 1, 1, T) bool."""
        # Zeroing the attention output at padded queries, then the whole block output, keeps
        # padded frames at exactly 0 so they never leak into the next block's keys or values.
        x = x + self.self_attn(self.norm_1(x), attend, cos, sin).masked_fill(~valid, 0.0)
        x = x + self.mlp(self.norm_2(x))
        return x.masked_fill(~valid, 0.0)


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        cos, sin = rope_cache(cfg.max_len, cfg.n_channels // cfg.n_heads)
        # Not persistent: the tables are a pure function of the config, and the authors'
        # checkpoints do not contain them.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), lengths (B,) -> (B, T, C). No final norm (as in the authors' model)."""
        B, T, _ = x.shape
        valid = torch.arange(T, device=x.device)[None, :] < lengths[:, None]  # (B, T)
        # Key padding mask. A row with length 0 would have no key at all and softmax would give
        # NaN; letting it attend everywhere is harmless because all its outputs are zeroed.
        attend = valid | (lengths == 0)[:, None]  # (B, T)
        attend = attend[:, None, None, :]  # (B, 1, 1, T): broadcast over heads and queries
        valid = valid[:, :, None]  # (B, T, 1)
        for block in self.layers:
            x = block(x, valid, attend, self.rope_cos, self.rope_sin)
        return x


# ----------------------------------------------------------------------------------------------
# TRIA


class TRIA(nn.Module):
    """Masked token model: tokens + rhythm features -> logits for every codebook (SPEC 3.2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        C, K, V = cfg.n_channels, cfg.n_codebooks, cfg.codebook_size
        self.adapter = nn.Linear(cfg.n_feats, C, bias=cfg.bias)
        self.in_proj = nn.Linear(2 * C, C, bias=cfg.bias)
        self.backbone = Backbone(cfg)
        self.registers = nn.Parameter(torch.randn(K, cfg.n_registers, C)) if cfg.n_registers else None
        self.tokens_emb = nn.Embedding(K * V, C)
        self.head = nn.Linear(C, K * V, bias=False)
        if cfg.share_emb:
            # Tie by giving the embedding the head's tensor: the shared matrix therefore keeps the
            # head's Linear init (uniform +-1/sqrt(C)), not N(0, 1). SPEC 3.2 step 11.
            self.tokens_emb.weight = self.head.weight
        # Marks only the current codebook's masked slots; higher codebooks stay all-zero (SPEC 9.1.4).
        self.tokens_mask_emb = nn.Parameter(torch.zeros(C))

    def _check_inputs(self, tokens, feats, codebook, tokens_mask, feats_mask, lengths) -> None:
        cfg = self.cfg
        if tokens.ndim != 3 or tokens.shape[1] != cfg.n_codebooks:
            raise ValueError(f"tokens must be (B, {cfg.n_codebooks}, T), got {tuple(tokens.shape)}")
        B, _, T = tokens.shape
        if feats.ndim != 3 or feats.shape[:2] != (B, cfg.n_feats):
            raise ValueError(f"feats must be (B={B}, F={cfg.n_feats}, T'), got {tuple(feats.shape)}")
        if tuple(tokens_mask.shape) != tuple(tokens.shape):
            raise ValueError(f"tokens_mask {tuple(tokens_mask.shape)} must match tokens {tuple(tokens.shape)}")
        if tuple(feats_mask.shape) != (B, feats.shape[2]):
            want = (B, feats.shape[2])
            raise ValueError(f"feats_mask must be (B, T') = {want}, got {tuple(feats_mask.shape)}")
        if tuple(codebook.shape) != (B,):
            raise ValueError(f"codebook must be (B,) = ({B},), got {tuple(codebook.shape)}")
        if lengths is not None and tuple(lengths.shape) != (B,):
            raise ValueError(f"lengths must be (B,) = ({B},), got {tuple(lengths.shape)}")
        if T + cfg.n_registers > cfg.max_len:
            raise ValueError(
                f"sequence of {T} frames (+{cfg.n_registers} registers) exceeds max_len {cfg.max_len}"
            )

    def forward(
        self,
        tokens: torch.Tensor,
        feats: torch.Tensor,
        codebook: torch.Tensor,
        tokens_mask: torch.Tensor,
        feats_mask: torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict logits for every codebook and frame.

        Args:
            tokens: (B, K, T) int token ids in [0, V); hidden entries may hold any valid id.
            feats: (B, F, T') rhythm features; resampled to T frames with `cfg.interp`.
            codebook: (B,) int, the codebook being predicted (gets the learned mask vector).
            tokens_mask: (B, K, T) bool, True = visible.
            feats_mask: (B, T') bool, True = the feature is supplied at that frame.
            lengths: (B,) valid frame counts (clamped to T), or None for all T.

        Returns:
            Logits of shape (B, K, T, V).
        """
        self._check_inputs(tokens, feats, codebook, tokens_mask, feats_mask, lengths)
        cfg = self.cfg
        B, K, T = tokens.shape
        device = tokens.device
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=device)
        lengths = lengths.to(device=device, dtype=torch.long).clamp(0, T)
        tokens_mask = tokens_mask.bool()

        # Features at token resolution: (B, F, T') -> (B, F, T); the mask always "nearest".
        feats = F.interpolate(feats.float(), size=T, mode=cfg.interp)  # (B, F, T)
        feats_mask = F.interpolate(feats_mask[:, None, :].float(), size=T, mode="nearest")  # (B, 1, T)
        feats_mask = feats_mask[:, 0] > 0.5  # (B, T)
        f = self.adapter(feats.transpose(1, 2).to(self.adapter.weight.dtype))  # (B, T, C)

        # Tokens: one flat table, codebook k owns rows [k*V, (k+1)*V).
        offsets = torch.arange(K, device=device)[None, :, None] * cfg.codebook_size  # (1, K, 1)
        emb = self.tokens_emb(tokens.long() + offsets)  # (B, K, T, C)
        emb = emb * tokens_mask[..., None].to(emb.dtype)  # hidden entries -> 0
        is_current = torch.arange(K, device=device)[None, :] == codebook.to(device)[:, None]  # (B, K)
        needs_mask_vec = is_current[:, :, None] & ~tokens_mask  # (B, K, T)
        emb = emb + needs_mask_vec[..., None].to(emb.dtype) * self.tokens_mask_emb  # (B, K, T, C)

        if self.training and cfg.p_token_dropout > 0:
            # Drop whole frames of the codebooks below the current one where features are on,
            # pushing the model to read the features instead of copying lower levels.
            below = torch.arange(K, device=device)[None, :] < codebook.to(device)[:, None]  # (B, K)
            eligible = below[:, :, None] & feats_mask[:, None, :]  # (B, K, T)
            drop = torch.rand(B, 1, T, device=device) < cfg.p_token_dropout  # (B, 1, T): same for all K
            emb = emb.masked_fill((drop & eligible)[..., None], 0.0)

        f = f * feats_mask[..., None].to(f.dtype)  # (B, T, C): features off -> 0
        x = self.in_proj(torch.cat([f, emb.sum(dim=1)], dim=-1))  # (B, T, 2C) -> (B, T, C)

        if self.registers is not None:
            R = cfg.n_registers
            regs = self.registers[codebook.to(device).long()]  # (B, R, C): the current codebook's set
            x = torch.cat([regs.to(x.dtype), x], dim=1)  # (B, R + T, C)
            lengths = lengths + R
        x = self.backbone(x, lengths)  # (B, R + T, C)
        if self.registers is not None:
            x = x[:, cfg.n_registers :]  # (B, T, C)

        logits = self.head(x)  # (B, T, K * V)
        logits = logits.view(B, T, K, cfg.codebook_size)  # (B, T, K, V)
        return logits.permute(0, 2, 1, 3)  # (B, K, T, V)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, counting tied tensors once (`parameters()` de-duplicates them)."""
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Named builders


def tria_small(n_feats: int = 2, **overrides) -> TRIA:
    """The paper / release model: C 512, 12 layers, 8 heads (43,051,008 parameters for 2 bands)."""
    cfg = dict(n_channels=512, n_layers=12, n_heads=8, mlp_mult=4, p_dropout=0.2, n_feats=n_feats)
    return TRIA(ModelConfig(**{**cfg, **overrides}))


def tria_tiny(n_feats: int = 2, **overrides) -> TRIA:
    """A very small model for CPU tests: C 64, 2 layers, 4 heads (head dim 16)."""
    cfg = dict(n_channels=64, n_layers=2, n_heads=4, mlp_mult=4, p_dropout=0.0, n_feats=n_feats)
    return TRIA(ModelConfig(**{**cfg, **overrides}))


def tria_student(n_feats: int = 2, **overrides) -> TRIA:
    """The authors' distilled student (SPEC 3.1 "tiny"): C 384, 6 layers, 6 heads (14,474,112 params)."""
    cfg = dict(n_channels=384, n_layers=6, n_heads=6, mlp_mult=4, p_dropout=0.2, n_feats=n_feats)
    return TRIA(ModelConfig(**{**cfg, **overrides}))
