"""Tests for tria/masking.py: the authors' draws, mask statistics, spans, codebook choice, loss."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tria.masking import (
    MaskConfig,
    build_training_batch,
    combine_masks,
    cosine_schedule,
    draw_codebooks,
    masked_token_loss,
)

K, V = 9, 1024


def batch(n, T, idx0=0, lengths=None, cfg=MaskConfig(), **kw):
    tokens = torch.zeros(n, K, T, dtype=torch.long)
    return build_training_batch(tokens, lengths, list(range(idx0, idx0 + n)), cfg, **kw)


class TestAuthorsDraws:
    def test_per_example_stream_matches_randomstate(self):
        cfg = MaskConfig(p_cfg_dropout=0.5)
        ids = [0, 7, 123, 99_999]
        out = build_training_batch(torch.zeros(4, K, 50, dtype=torch.long), None, ids, cfg)
        for i, idx in enumerate(ids):
            s = np.random.RandomState(idx)
            u_t = s.uniform(0, 1, (1,))[0]
            cb = s.randint(0, K, (1,))[0]
            keep = s.uniform(0, 1) > 0.5
            assert out["t"][i].item() == np.float32(u_t)
            assert out["mask_prop"][i].item() == pytest.approx(math.cos(math.pi * u_t / 2), abs=1e-6)
            assert out["codebook"][i].item() == cb
            assert out["cfg_keep"][i].item() == keep

    def test_random_mask_uses_fresh_state_and_float32_ratio(self):
        out = batch(3, 40, idx0=11)
        for i in range(3):
            u = np.random.RandomState(11 + i).rand(K, 40)
            p = out["mask_prop"][i].item()  # float32 value, as the authors compare
            assert torch.equal(out["random_mask"][i], torch.from_numpy(u > p))

    def test_span_follows_fresh_randomstate(self):
        lengths = torch.tensor([100, 73, 40, 100])
        out = batch(4, 100, idx0=321, lengths=lengths)
        for i in range(4):
            s, L = np.random.RandomState(321 + i), lengths[i].item()
            span = int(s.uniform(0.5, 0.75) * L)
            start = s.randint(0, max(L - span, 1))
            want = torch.ones(100, dtype=torch.bool)
            want[start : start + span] = False
            assert torch.equal(out["span_mask"][i], want)

    def test_correlated_span_quirk_and_its_switch(self):
        cfg = MaskConfig(min_span_prop=0.5, max_span_prop=0.75)
        out = batch(50, 100, idx0=1000, cfg=cfg)
        u = torch.tensor([np.random.RandomState(1000 + i).uniform() for i in range(50)], dtype=torch.float64)
        torch.testing.assert_close(out["span_prop"], 0.5 + 0.25 * u)  # SPEC 9.1.1
        ind = batch(50, 100, idx0=1000, cfg=MaskConfig(correlated_seeds=False))
        assert (ind["span_prop"] - (0.5 + 0.25 * ind["t"].double())).abs().max() > 0.05
        # And independent streams decorrelate span length from the mask ratio.
        many = batch(2000, 100, cfg=MaskConfig(correlated_seeds=False))
        r = np.corrcoef(many["span_prop"].numpy(), many["t"].numpy())[0, 1]
        assert abs(r) < 0.1

    def test_same_ids_same_masks(self):
        a, b = batch(8, 60, idx0=5), batch(8, 60, idx0=5)
        for key in a:
            assert torch.equal(a[key], b[key])
        c = batch(8, 60, idx0=6)
        assert not torch.equal(a["tokens_mask"], c["tokens_mask"])


class TestMaskStatistics:
    def test_realised_ratio_matches_schedule(self):
        T = 200
        out = batch(3000, T)
        cb = out["codebook"]
        inside = ~out["span_mask"]  # (B, T)
        hidden = ~out["tokens_mask"][torch.arange(3000), cb]  # (B, T), chosen codebook
        per_item = (hidden & inside).sum(1) / inside.sum(1)  # realised ratio in the span
        expected = 2 / math.pi  # E[cos(pi t / 2)], t ~ U(0, 1)
        assert abs(per_item.mean().item() - expected) < 0.02
        assert abs(out["mask_prop"].mean().item() - expected) < 0.02
        # Item by item, the realised ratio follows that item's p (binomial noise only).
        assert (per_item - out["mask_prop"]).abs().mean() < 0.05

    def test_cosine_schedule_values(self):
        t = torch.tensor([0.0, 0.5, 1.0])
        torch.testing.assert_close(cosine_schedule(t), torch.tensor([1.0, math.cos(math.pi / 4), 1e-10]))

    def test_codebooks_uniform_and_cfg_rate(self):
        out = batch(4500, 10, cfg=MaskConfig(p_cfg_dropout=0.8))
        counts = torch.bincount(out["codebook"], minlength=K).float()
        assert (counts / 4500 - 1 / K).abs().max() < 0.02
        assert abs(out["cfg_keep"].float().mean().item() - 0.2) < 0.02


class TestSpans:
    @pytest.mark.parametrize("lo,hi", [(0.5, 0.75), (0.25, 0.25), (0.1, 0.9)])
    def test_contiguous_with_configured_length(self, lo, hi):
        cfg = MaskConfig(min_span_prop=lo, max_span_prop=hi)
        lengths = torch.randint(20, 120, (300,), generator=torch.Generator().manual_seed(0))
        out = batch(300, 120, lengths=lengths, cfg=cfg)
        for i in range(300):
            inside = torch.nonzero(~out["span_mask"][i]).flatten()
            L = lengths[i].item()
            prop = out["span_prop"][i].item()
            assert lo <= prop <= hi
            assert len(inside) == int(prop * L)
            assert inside.max() < L  # within the valid length
            assert torch.equal(inside, torch.arange(inside[0], inside[0] + len(inside)))  # contiguous

    def test_full_span_and_empty_length(self):
        cfg = MaskConfig(min_span_prop=1.0, max_span_prop=1.0)
        out = batch(2, 30, lengths=torch.tensor([30, 0]), cfg=cfg)
        assert not out["span_mask"][0].any()
        assert out["span_mask"][1].all() and out["tokens_mask"][1].all()


class TestCombine:
    def test_rules(self):
        out = batch(64, 50, cfg=MaskConfig(p_cfg_dropout=0.0))
        tm, span, cb, rand = out["tokens_mask"], out["span_mask"], out["codebook"], out["random_mask"]
        for i in range(64):
            c = cb[i].item()
            inside = ~span[i]
            assert tm[i][:, ~inside].all()  # outside the span everything is visible
            assert tm[i][:c][:, inside].all()  # lower codebooks visible
            assert not tm[i][c + 1 :][:, inside].any()  # higher codebooks hidden
            assert torch.equal(tm[i, c, inside], rand[i, c, inside])  # current: the random mask
        assert torch.equal(out["feats_mask"], ~span & out["cfg_keep"][:, None])

    def test_combine_small_example(self):
        span = torch.tensor([[True, False, False, True]])
        rand = torch.tensor([[True, False, True, False]]).expand(1, 3, 4)
        got = combine_masks(span, torch.tensor([1]), rand)
        want = torch.tensor([[[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 0, 1]]], dtype=torch.bool)
        assert torch.equal(got, want)


class TestCodebookChoice:
    def test_allowed_sets_respected(self):
        g = torch.Generator().manual_seed(3)
        allowed = torch.rand(500, K, generator=g) > 0.6
        allowed[torch.arange(500), torch.randint(0, K, (500,), generator=g)] = True  # at least one each
        out = batch(500, 10, allowed=allowed)
        assert allowed[torch.arange(500), out["codebook"]].all()

    def test_weights_proportional(self):
        w = torch.tensor([4.0, 2, 1, 1, 0, 0, 0, 0, 0])
        out = batch(4000, 10, weights=w)
        freq = torch.bincount(out["codebook"], minlength=K).float() / 4000
        torch.testing.assert_close(freq, w / w.sum(), atol=0.025, rtol=0)

    def test_uniform_subset_uses_randint_over_members(self):
        allowed = torch.zeros(20, K, dtype=torch.bool)
        allowed[:, [0, 1, 2]] = True
        out = batch(20, 10, idx0=40, allowed=allowed)
        for i in range(20):
            s = np.random.RandomState(40 + i)
            s.uniform(0, 1, (1,))
            assert out["codebook"][i].item() == [0, 1, 2][s.randint(0, 3, (1,))[0]]

    def test_no_allowed_codebook_is_an_error(self):
        allowed = torch.ones(2, K, dtype=torch.bool)
        allowed[1] = False
        with pytest.raises(ValueError, match="no allowed codebook"):
            batch(2, 10, allowed=allowed)
        with pytest.raises(ValueError, match="weights"):
            draw_codebooks([np.random.RandomState(0)], weights=[-1.0] * K)


class TestInputChecks:
    def test_bad_ids_and_shapes(self):
        tokens = torch.zeros(2, K, 10, dtype=torch.long)
        with pytest.raises(ValueError, match="idx"):
            build_training_batch(tokens, None, [1], MaskConfig())
        with pytest.raises(ValueError, match="idx"):
            build_training_batch(tokens, None, [-1, 2], MaskConfig())
        with pytest.raises(ValueError, match="tokens"):
            build_training_batch(tokens[:, :3], None, [1, 2], MaskConfig())
        with pytest.raises(ValueError, match="lengths"):
            build_training_batch(tokens, torch.tensor([3]), [1, 2], MaskConfig())
        with pytest.raises(ValueError, match="span_prop"):
            MaskConfig(min_span_prop=0.8, max_span_prop=0.5)
        with pytest.raises(ValueError, match="loss_normalization"):
            MaskConfig(loss_normalization="mean")


class TestLoss:
    def setup_method(self):
        g = torch.Generator().manual_seed(0)
        self.B, self.T = 4, 30
        self.tokens = torch.randint(0, V, (self.B, K, self.T), generator=g)
        self.lengths = torch.tensor([30, 20, 25, 10])
        self.out = build_training_batch(self.tokens, self.lengths, [10, 20, 30, 40], MaskConfig())
        self.logits = torch.randn(self.B, K, self.T, V, generator=g, requires_grad=True)

    def loss(self, logits=None, **kw):
        logits = self.logits if logits is None else logits
        out = self.out
        return masked_token_loss(logits, self.tokens, out["tokens_mask"], out["codebook"], self.lengths, **kw)

    def target_mask(self):
        loss_mask = torch.zeros(self.B, K, self.T, dtype=torch.bool)
        for i in range(self.B):
            c = self.out["codebook"][i]
            loss_mask[i, c] = ~self.out["tokens_mask"][i, c]
        return loss_mask & (torch.arange(self.T) < self.lengths[:, None, None])

    def test_only_chosen_codebook_masked_positions_get_gradient(self):
        res = self.loss()
        res.loss.backward()
        touched = self.logits.grad.abs().sum(-1) > 0  # (B, K, T)
        assert torch.equal(touched, self.target_mask())
        assert res.n_tokens.item() == self.target_mask().sum().item() > 0

    def test_authors_normalisation_matches_reference(self):
        res = self.loss()
        full = F.cross_entropy(  # the authors' way: all K codebooks, then a 0/1 mask
            self.logits.permute(0, 3, 1, 2), self.tokens, reduction="none", label_smoothing=0.1
        )
        ref = (full * self.target_mask()).mean()  # the authors' B*K*T mean
        torch.testing.assert_close(res.loss, ref)
        masked = self.loss(normalization="masked")
        torch.testing.assert_close(masked.loss, (full * self.target_mask()).sum() / self.target_mask().sum())
        assert masked.n_tokens == res.n_tokens

    def test_per_codebook_stats_and_accuracy(self):
        mask = self.target_mask()
        logits = torch.full((self.B, K, self.T, V), -5.0)
        logits.scatter_(-1, self.tokens[..., None], 5.0)  # perfect prediction everywhere ...
        logits[0, :, :5] = 0.0
        logits[0, :, :5, 0] = 1.0  # ... except the first 5 frames of item 0 (predict 0)
        res = self.loss(logits, label_smoothing=0.0)
        cb = self.out["codebook"]
        assert res.codebook_count.sum() == mask.sum()
        for c in range(K):
            n = mask[cb == c].sum()
            assert res.codebook_count[c] == n
        wrong = (mask[0, cb[0], :5] & (self.tokens[0, cb[0], :5] != 0)).sum()
        assert res.codebook_correct.sum() == mask.sum() - wrong
        metrics = res.codebook_metrics()
        assert set(metrics) == {f"{kind}/codebook_{c}" for c in cb.unique().tolist()
                                for kind in ["loss", "acc"]}

    def test_bad_logits_shape(self):
        with pytest.raises(ValueError, match="logits"):
            masked_token_loss(self.logits[:, :3], self.tokens, self.out["tokens_mask"], self.out["codebook"])
