"""Tests for tria/sampling.py: each decoding step, the loop's invariants, CFG, seeds, prompt layout."""

import math

import numpy as np
import pytest
import torch

from tria.model import tria_tiny
from tria.sampling import (
    GUMBEL_SEED_STRIDE,
    SamplerConfig,
    filter_logits,
    generate,
    guided_logits,
    gumbel_noise,
    mask_by_confidence,
    prompt_layout,
    sample_step,
    schedule,
)

K, V = 9, 1024


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = tria_tiny()
    with torch.no_grad():
        m.tokens_mask_emb.normal_()
    return m.eval()


def prompt(B=2, Tp=6, Tr=18, seed=0):
    g = torch.Generator().manual_seed(seed)
    return prompt_layout(torch.randint(0, V, (B, K, Tp), generator=g), torch.rand(B, 2, Tr, generator=g))


class TestFilter:
    def test_top_k(self):
        logits = torch.randn(3, 5, V)
        out = filter_logits(logits, top_k=7)
        assert (torch.isfinite(out).sum(-1) == 7).all()
        assert torch.equal(out.argmax(-1), logits.argmax(-1))

    def test_top_p_keeps_smallest_nucleus(self):
        probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
        logits = probs.log().repeat(2, 1)
        kept = torch.isfinite(filter_logits(logits, top_p=0.85))
        assert kept[0].tolist() == [True, True, False, False]  # cumsum 0.5, 0.8, 0.95 > 0.85
        assert torch.isfinite(filter_logits(logits, top_p=0.1)).sum(-1).tolist() == [1, 1]  # always one
        assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()  # off
        assert torch.isfinite(filter_logits(logits, top_k=0, top_p=None)).all()  # off

    def test_does_not_modify_input(self):
        logits = torch.randn(2, V)
        before = logits.clone()
        filter_logits(logits, top_k=3, top_p=0.5)
        assert torch.equal(logits, before)


class TestSampleStep:
    def test_argmax_confidence_is_untempered_softmax(self):
        logits = torch.randn(2, 4, V)
        tok, p = sample_step(logits, temp=3.0, argmax=True)
        assert torch.equal(tok, logits.argmax(-1))
        torch.testing.assert_close(p, logits.softmax(-1).amax(-1))

    def test_sampling_uses_generators_not_global_rng(self):
        logits = torch.randn(2, 50, V)
        gens = lambda: [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]  # noqa: E731
        a, pa = sample_step(logits, 1.0, False, gens())
        torch.manual_seed(123)  # the global RNG must not matter
        b, pb = sample_step(logits, 1.0, False, gens())
        assert torch.equal(a, b) and torch.equal(pa, pb)
        torch.testing.assert_close(pa, logits.softmax(-1).gather(-1, a[..., None])[..., 0])
        with pytest.raises(ValueError, match="Generator"):
            sample_step(logits, 1.0, False, None)

    def test_temperature_zero_is_argmax(self):
        logits = torch.randn(1, 6, V)
        assert torch.equal(sample_step(logits, 0.0, False)[0], logits.argmax(-1))


class TestSchedule:
    def test_counts_follow_cosine(self):
        n0 = torch.tensor([100, 7, 1])
        n = n0.clone()
        seen = []
        for i in range(8):
            tgt = schedule(i, 8, n0, n)
            seen.append(tgt.tolist())
            n = tgt
        want0 = [math.floor(math.cos(math.pi * (i + 1) / 16) * 100) for i in range(7)] + [0]
        assert [s[0] for s in seen] == want0
        assert seen[-1] == [0, 0, 0]
        # Before the last step at least one stays masked and at least one is revealed.
        assert all(s[1] >= 1 for s in seen[:-1])

    def test_single_iteration_unmasks_all(self):
        assert schedule(0, 1, torch.tensor([40]), torch.tensor([40])).tolist() == [0]


class TestMaskByConfidence:
    def test_unmasks_exact_count_of_most_confident(self):
        probs = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.2, 0.95]])
        masked = torch.tensor([[True, True, True, True, True, False]])
        vis = mask_by_confidence(probs, masked, torch.tensor([2]), torch.zeros(1, 6), 0.0)
        assert vis.tolist() == [[True, False, True, True, False, True]]  # 0.9, 0.7, 0.5 revealed

    def test_causal_bias_prefers_early_frames(self):
        probs = torch.full((1, 10), 0.5)
        masked = torch.ones(1, 10, dtype=torch.bool)
        vis = mask_by_confidence(probs, masked, torch.tensor([6]), torch.zeros(1, 10), 0.0, causal_bias=1.0)
        assert vis[0].tolist() == [True] * 4 + [False] * 6

    def test_gumbel_streams_per_example(self):
        states = [np.random.RandomState(5), np.random.RandomState(6)]
        g = gumbel_noise(states, torch.zeros(2, 12))
        u = np.random.RandomState(6).uniform(1e-6, 1 - 1e-6, 12)
        torch.testing.assert_close(g[1], -torch.log(-torch.log(torch.from_numpy(u).float())))


class TestGenerate:
    def test_fills_everything_and_unmasks_expected_counts(self, model):
        p = prompt(B=2, Tp=5, Tr=21)
        steps = []
        cfg = SamplerConfig(iterations=[3, 2, 1, 4, 2, 2, 2, 2, 5])
        out = generate(model, p.tokens, p.feats, p.tokens_mask, p.feats_mask, config=cfg, seed=[1, 2],
                       callback=steps.append)
        assert len(steps) == sum(cfg.iterations)
        for s in steps:
            hidden_now = (~s.tokens_mask[:, s.codebook]).sum(-1)
            assert torch.equal(hidden_now, s.n_target)  # exactly the scheduled number stays masked
            assert (s.tokens_mask[:, : s.codebook]).all()
            assert not s.tokens_mask[:, s.codebook + 1 :, 5:].any()  # higher codebooks wait their turn
            if s.iteration < s.iterations - 1:
                assert (s.n_target >= 1).all() and (s.n_target < s.n_masked_before).all()
        first = steps[0]
        want = math.floor(math.cos(math.pi / 6) * 21)
        assert first.n_masked_before.tolist() == [21, 21] and first.n_target.tolist() == [want, want]
        assert steps[-1].tokens_mask.all()  # nothing left masked
        assert torch.equal(out[:, :, :5], p.tokens[:, :, :5])  # the prefix is untouched
        assert out.min() >= 0 and out.max() < V

    def test_deterministic_under_seed(self, model):
        p = prompt(B=2)
        cfg = SamplerConfig(iterations=2, guidance_scale=None)
        a = generate(model, p.tokens, p.feats, p.tokens_mask, p.feats_mask, config=cfg, seed=7)
        torch.manual_seed(999)
        b = generate(model, p.tokens, p.feats, p.tokens_mask, p.feats_mask, config=cfg, seed=7)
        c = generate(model, p.tokens, p.feats, p.tokens_mask, p.feats_mask, config=cfg, seed=8)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    def test_frames_past_length_untouched(self, model):
        p = prompt(B=2, Tp=4, Tr=16)
        out = generate(model, p.tokens, p.feats, p.tokens_mask, p.feats_mask, lengths=torch.tensor([20, 12]),
                       config=SamplerConfig(iterations=2, guidance_scale=None))
        assert torch.equal(out[1, :, 12:], p.tokens[1, :, 12:])  # placeholders stay
        assert not torch.equal(out[0, :, 12:], p.tokens[0, :, 12:])

    def test_restores_training_mode(self):
        m = tria_tiny().train()
        p = prompt(B=1, Tp=2, Tr=4)
        generate(m, p.tokens, p.feats, p.tokens_mask, p.feats_mask, config=SamplerConfig(iterations=1))
        assert m.training


class TestGuidance:
    def test_scale_zero_is_unconditional_and_one_is_conditional(self, model):
        p = prompt(B=2)
        args = (p.tokens, p.feats, 3, p.tokens_mask, p.feats_mask, torch.tensor([24, 24]))
        cb = torch.full((2,), 3)
        uncond = model(p.tokens, p.feats, cb, p.tokens_mask, torch.zeros_like(p.feats_mask))
        cond = model(p.tokens, p.feats, cb, p.tokens_mask, p.feats_mask)
        torch.testing.assert_close(guided_logits(model, *args, 0.0), uncond, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(guided_logits(model, *args, 1.0), cond, atol=1e-5, rtol=1e-5)
        w2 = guided_logits(model, *args, 2.0)
        torch.testing.assert_close(w2, 2 * cond - uncond, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(cond, uncond)


class TestConfig:
    def test_defaults_and_presets(self):
        d = SamplerConfig()
        assert (d.iterations, d.top_p, d.top_k, d.temp, d.mask_temp, d.guidance_scale, d.causal_bias) == (
            8, 0.85, None, 1.0, 10.5, 2.0, 1.0)
        a = SamplerConfig.authors_signature().per_codebook(K)[0]
        assert (a["top_p"], a["guidance_scale"], a["causal_bias"]) == (1.0, 0.0, 0.0)
        assert SamplerConfig.app().top_p is None

    def test_per_codebook_lists(self):
        rows = SamplerConfig(temp=[0.5] * 9, iterations=[1, 2, 3, 4, 5, 6, 7, 8, 0]).per_codebook(K)
        assert [r["iterations"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8, 1]
        with pytest.raises(ValueError, match="one per codebook"):
            SamplerConfig(temp=[1.0, 2.0]).per_codebook(K)
        with pytest.raises(ValueError, match=">= 0"):
            SamplerConfig(mask_temp=-1).per_codebook(K)

    def test_gumbel_seed_stride(self):
        assert GUMBEL_SEED_STRIDE == 10007


class TestPromptLayout:
    def test_layout(self):
        timbre = torch.randint(0, V, (2, K, 4))
        feats = torch.rand(2, 3, 6)
        p = prompt_layout(timbre, feats)
        assert p.tokens.shape == (2, K, 10) and p.feats.shape == (2, 3, 10)
        assert torch.equal(p.tokens[:, :, :4], timbre)
        assert p.tokens_mask[:, :, :4].all() and not p.tokens_mask[:, :, 4:].any()
        assert not p.feats_mask[:, :4].any() and p.feats_mask[:, 4:].all()
        assert (p.feats[:, :, :4] == 0).all() and torch.equal(p.feats[:, :, 4:], feats)
        assert p.prefix_frames == 4

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="same B"):
            prompt_layout(torch.zeros(2, K, 4, dtype=torch.long), torch.zeros(3, 2, 5))
        p = prompt(B=2)
        with pytest.raises(ValueError, match="one per example"):
            generate(tria_tiny(), p.tokens, p.feats, p.tokens_mask, p.feats_mask, seed=[1, 2, 3])
        with pytest.raises(ValueError, match="seeds must be in"):
            generate(tria_tiny(), p.tokens, p.feats, p.tokens_mask, p.feats_mask, seed=-1)
