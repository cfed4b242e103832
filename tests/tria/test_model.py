"""Unit tests for tria/model.py: sizes, masking semantics, padding, RoPE, input checks."""

import math

import pytest
import torch

from tria.model import (
    TRIA,
    ModelConfig,
    apply_rope,
    count_parameters,
    rope_cache,
    tria_small,
    tria_student,
    tria_tiny,
)

K, V = 9, 1024


def make_inputs(B=2, T=24, Tf=None, n_feats=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    Tf = Tf or T
    tokens = torch.randint(0, V, (B, K, T), generator=g)
    feats = torch.rand(B, n_feats, Tf, generator=g)
    codebook = torch.randint(0, K, (B,), generator=g)
    tokens_mask = torch.rand(B, K, T, generator=g) > 0.5
    feats_mask = torch.rand(B, Tf, generator=g) > 0.3
    return tokens, feats, codebook, tokens_mask, feats_mask


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = tria_tiny()
    with torch.no_grad():  # non-zero so the tests can see where it is added
        m.tokens_mask_emb.normal_()
    return m.eval()


class TestSize:
    @pytest.mark.parametrize(
        "n_feats,expected", [(1, 43_050_496), (2, 43_051_008), (3, 43_051_520), (4, 43_052_032)]
    )
    def test_tria_small_parameter_count(self, n_feats, expected):
        with torch.device("meta"):  # no memory for 43 M weights
            m = tria_small(n_feats)
        assert count_parameters(m) == expected

    def test_student_parameter_count(self):
        with torch.device("meta"):
            assert count_parameters(tria_student()) == 14_474_112

    def test_small_breakdown(self):
        with torch.device("meta"):
            m = tria_small(2)
        assert m.tokens_emb.weight.numel() == 9216 * 512
        assert sum(p.numel() for p in m.in_proj.parameters()) == 524_800
        assert sum(p.numel() for p in m.backbone.layers[0].parameters()) == 3_150_464

    def test_embedding_is_tied_to_head_with_linear_init(self):
        m = tria_tiny()
        assert m.tokens_emb.weight is m.head.weight
        bound = 1 / math.sqrt(m.cfg.n_channels)
        assert m.head.weight.abs().max() <= bound
        assert m.head.weight.abs().max() > 0.9 * bound  # uniform, not N(0, 1) and not tiny

    def test_state_dict_keys_follow_authors_names(self):
        keys = set(tria_tiny().state_dict())
        for k in ["adapter.weight", "in_proj.bias", "tokens_emb.weight", "head.weight", "tokens_mask_emb",
                  "backbone.layers.0.norm_1.weight", "backbone.layers.0.self_attn.q_proj.weight",
                  "backbone.layers.0.self_attn.qk_norm.g_q", "backbone.layers.1.mlp.mlp.2.bias"]:
            assert k in keys
        assert not any("rope" in k for k in keys)
        assert "backbone.layers.0.self_attn.q_proj.bias" not in keys


class TestForward:
    def test_shape_and_finite(self, model):
        out = model(*make_inputs(B=3, T=30, Tf=31), lengths=torch.tensor([30, 12, 1]))
        assert out.shape == (3, K, 30, V)
        assert torch.isfinite(out).all()

    def test_padding_invariance(self, model):
        tokens, feats, cb, tmask, fmask = make_inputs(B=2, T=20)
        ref = model(tokens, feats, cb, tmask, fmask)
        pad = 7
        g = torch.Generator().manual_seed(5)  # garbage in the padding must not matter
        tokens_p = torch.cat([tokens, torch.randint(0, V, (2, K, pad), generator=g)], -1)
        feats_p = torch.cat([feats, torch.rand(2, 2, pad, generator=g)], -1)
        tmask_p = torch.cat([tmask, torch.rand(2, K, pad, generator=g) > 0.5], -1)
        fmask_p = torch.cat([fmask, torch.ones(2, pad, dtype=torch.bool)], -1)
        out = model(tokens_p, feats_p, cb, tmask_p, fmask_p, lengths=torch.tensor([20, 20]))
        torch.testing.assert_close(out[:, :, :20], ref, atol=1e-5, rtol=1e-5)

    def test_padding_invariance_with_registers(self):
        torch.manual_seed(1)
        m = tria_tiny(n_registers=3).eval()
        tokens, feats, cb, tmask, fmask = make_inputs(B=2, T=16)
        ref = m(tokens, feats, cb, tmask, fmask)
        out = m(torch.cat([tokens, tokens[..., :5]], -1), torch.cat([feats, feats[..., :5]], -1), cb,
                torch.cat([tmask, tmask[..., :5]], -1), torch.cat([fmask, fmask[..., :5]], -1),
                lengths=torch.tensor([16, 16]))
        torch.testing.assert_close(out[:, :, :16], ref, atol=1e-5, rtol=1e-5)

    def test_hidden_token_values_are_ignored(self, model):
        tokens, feats, cb, tmask, fmask = make_inputs()
        other = torch.where(tmask, tokens, (tokens + 17) % V)
        ref = model(tokens, feats, cb, tmask, fmask)
        torch.testing.assert_close(ref, model(other, feats, cb, tmask, fmask))

    def test_masked_off_feature_values_are_ignored(self, model):
        tokens, feats, cb, tmask, fmask = make_inputs()
        other = torch.where(fmask[:, None, :], feats, feats + 3.0)
        ref = model(tokens, feats, cb, tmask, fmask)
        torch.testing.assert_close(ref, model(tokens, other, cb, tmask, fmask))
        assert not torch.allclose(ref, model(tokens, feats + 3.0, cb, tmask, fmask))  # features do matter

    def test_mask_vector_only_at_current_codebook(self, model):
        tokens, feats, _, _, fmask = make_inputs(B=1)
        tmask = torch.ones(1, K, tokens.shape[-1], dtype=torch.bool)
        tmask[:, 5:, 3:10] = False  # codebook 5 is current, 6.. are "higher" and hidden
        cb = torch.tensor([5])
        out = model(tokens, feats, cb, tmask, fmask)
        with torch.no_grad():
            saved = model.tokens_mask_emb.clone()
            model.tokens_mask_emb.zero_()
            no_vec = model(tokens, feats, cb, tmask, fmask)
            # Codebook 3 has no hidden slot here, so no mask vector is added anywhere.
            cb3 = model(tokens, feats, torch.tensor([3]), tmask, fmask)
            model.tokens_mask_emb.copy_(saved)
            cb3_with_vec = model(tokens, feats, torch.tensor([3]), tmask, fmask)
        assert not torch.allclose(out, no_vec)
        torch.testing.assert_close(cb3, cb3_with_vec)

    def test_feature_interpolation_to_token_frames(self, model):
        tokens, feats, cb, tmask, _ = make_inputs(T=20)
        feats2 = feats.repeat_interleave(2, dim=-1)  # (B, F, 40): nearest down-sampling gives feats back
        ones = torch.ones(2, 40, dtype=torch.bool)
        a = model(tokens, feats2, cb, tmask, ones)
        b = model(tokens, feats, cb, tmask, torch.ones(2, 20, dtype=torch.bool))
        torch.testing.assert_close(a, b)

    def test_zero_length_row_gives_no_nan_and_gradients(self):
        torch.manual_seed(0)
        m = tria_tiny()
        out = m(*make_inputs(B=2), lengths=torch.tensor([0, 24]))
        out.sum().backward()
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)

    def test_token_dropout_only_in_training(self):
        torch.manual_seed(0)
        m = tria_tiny(p_token_dropout=0.9)
        args = make_inputs()
        args = (args[0], args[1], torch.tensor([8, 8]), *args[3:])
        m.eval()
        a, b = m(*args), m(*args)
        torch.testing.assert_close(a, b)
        m.train()
        torch.manual_seed(1)
        assert not torch.allclose(m(*args), a)


class TestRope:
    def test_rotation_preserves_norm_and_is_relative(self):
        cos, sin = rope_cache(50, 16)
        g = torch.Generator().manual_seed(0)
        q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
        seq_q, seq_k = q.expand(1, 1, 50, 16), k.expand(1, 1, 50, 16)
        rq, rk = apply_rope(seq_q, cos, sin), apply_rope(seq_k, cos, sin)
        torch.testing.assert_close(rq.norm(dim=-1), seq_q.norm(dim=-1))
        dots = rq[0, 0] @ rk[0, 0].T  # (50, 50), should depend only on m - n
        torch.testing.assert_close(dots[10, 3], dots[40, 33], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(dots[2, 9], dots[30, 37], atol=1e-4, rtol=1e-4)

    def test_interleaved_pairs(self):
        cos, sin = rope_cache(4, 4)
        x = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, 4).expand(1, 1, 4, 4)
        out = apply_rope(x, cos, sin)[0, 0]
        # pair 0 turns by pos * 1, pair 1 by pos * 10000^(-1/2) = pos / 100
        torch.testing.assert_close(out[3, :2], torch.tensor([math.cos(3), math.sin(3)]))
        torch.testing.assert_close(out[3, 2:], torch.tensor([math.cos(0.03), math.sin(0.03)]))


class TestBlockReference:
    def test_block_matches_spec_written_out(self):
        """Pre-LN block with RoPE *then* QK RMS-norm (gains made non-trivial so the order shows)."""
        torch.manual_seed(0)
        m = tria_tiny().eval()
        block = m.backbone.layers[0]
        with torch.no_grad():
            block.self_attn.qk_norm.g_q.uniform_(0.5, 2.0)
            block.self_attn.qk_norm.g_k.uniform_(0.5, 2.0)
        B, T, C, H = 2, 10, 64, 4
        D = C // H
        x = torch.randn(B, T, C)
        lengths = torch.tensor([10, 6])
        valid = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)

        def heads(y):
            return y.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)

        def rope(y):  # pair (2i, 2i+1) at position p turns by p * 10000^(-2i/D)
            pos = torch.arange(T, dtype=torch.float32)[:, None]
            ang = pos * 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)  # (T, D/2)
            a, b = y[..., 0::2], y[..., 1::2]
            out = torch.empty_like(y)
            out[..., 0::2] = a * ang.cos() - b * ang.sin()
            out[..., 1::2] = a * ang.sin() + b * ang.cos()
            return out

        def rms(y, g):
            return y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * g

        att = block.self_attn
        h = block.norm_1(x)
        q = rms(rope(heads(att.q_proj(h))), att.qk_norm.g_q)
        k = rms(rope(heads(att.k_proj(h))), att.qk_norm.g_k)
        v = heads(att.v_proj(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)  # (B, H, T, T)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        y = att.o_proj(y) * valid[..., None]
        x1 = x + y
        x2 = x1 + block.mlp.mlp[2](torch.nn.functional.gelu(block.mlp.mlp[0](block.norm_2(x1))))
        want = x2 * valid[..., None]

        cos, sin = m.backbone.rope_cos, m.backbone.rope_sin
        got = block(x, valid[..., None], valid[:, None, None, :], cos, sin)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


class TestInputChecks:
    def test_too_long(self, model):
        with pytest.raises(ValueError, match="max_len"):
            model(*make_inputs(T=1001))

    @pytest.mark.parametrize(
        "name,make_bad,message",
        [
            ("tokens", lambda a: a["tokens"][:, :4], "tokens must be"),
            ("feats", lambda a: a["feats"][:, :1], "feats must be"),
            ("codebook", lambda a: a["codebook"][:1], "codebook must be"),
            ("tokens_mask", lambda a: a["tokens_mask"][..., :3], "tokens_mask"),
            ("feats_mask", lambda a: a["feats_mask"][:, :3], "feats_mask must be"),
            ("lengths", lambda a: torch.tensor([3]), "lengths must be"),
        ],
    )
    def test_bad_shapes(self, model, name, make_bad, message):
        tokens, feats, cb, tmask, fmask = make_inputs()
        args = dict(
            tokens=tokens, feats=feats, codebook=cb, tokens_mask=tmask, feats_mask=fmask, lengths=None
        )
        args[name] = make_bad(args)
        with pytest.raises(ValueError, match=message):
            model(**args)

    def test_bad_config(self):
        with pytest.raises(ValueError, match="divisible"):
            ModelConfig(n_channels=60, n_layers=1, n_heads=8)
        with pytest.raises(ValueError, match="interp"):
            ModelConfig(n_channels=64, n_layers=1, n_heads=4, interp="cubic")
        assert TRIA(ModelConfig(n_channels=32, n_layers=1, n_heads=2)).cfg.to_dict()["n_channels"] == 32
