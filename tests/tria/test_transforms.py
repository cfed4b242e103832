"""Tests for tria/transforms.py: the batched, per-item-seeded rhythm-prompt augmentation chain."""

from __future__ import annotations

import math

import julius
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synth_audio import hat, kick, place

from tria.transforms import (
    AugmentConfig,
    augment_rhythm,
    band_pass,
    equalize,
    fast_pitch_ratios,
    pitch_shift,
    sample_params,
    shift_phase,
    snap_ratio,
)

SR = 44_100


def tone(freq: float, seconds: float = 1.0, amp: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (amp * torch.sin(2 * math.pi * freq * t)).float()


def drums(seconds: float = 1.0, seed: int = 0, amp: float = 0.3) -> torch.Tensor:
    """(N,) a kick/hat pattern plus a little noise, scaled to peak ``amp``."""
    events = [(t, kick()) for t in np.arange(0, seconds, 0.5)] + \
             [(t, hat(seed=seed)) for t in np.arange(0.25, seconds, 0.25)]
    y = place(events, seconds) + 0.01 * np.random.default_rng(seed).standard_normal(int(seconds * SR))
    return torch.from_numpy(amp * y / np.abs(y).max()).float()


def amplitude_at(x: torch.Tensor, freq: float) -> float:
    """Amplitude of the ``freq`` component in the middle half of x (edges excluded)."""
    mid = x[..., x.shape[-1] // 4: 3 * x.shape[-1] // 4].double()
    t = torch.arange(mid.shape[-1], dtype=torch.float64) / SR
    basis = torch.exp(-2j * math.pi * freq * t)
    return float(2 * (mid * basis).mean().abs())


def peak_frequency(x: torch.Tensor) -> float:
    spec = torch.fft.rfft(x.double() * torch.hann_window(x.shape[-1], dtype=torch.float64)).abs()
    return float(spec.argmax()) * SR / x.shape[-1]


def energy(x: torch.Tensor) -> torch.Tensor:
    return x.double().square().mean(dim=-1)


class TestConfig:
    def test_presets_follow_spec(self):
        paper, release = AugmentConfig.paper(), AugmentConfig.release()
        assert (paper.tfm_prob, paper.pitch_semitones, paper.pitch_prob) == (0.25, (-6.0, 6.0), 1.0)
        assert (release.tfm_prob, release.pitch_semitones) == (0.75, (-6.0, 12.0))
        assert paper.lowcut_choices == tuple(range(100, 1001, 100))
        assert paper.highcut_choices == tuple(range(2000, 6001, 500))
        assert paper.snr_db == (10.0, 30.0) and paper.eq_bands == 6 and paper.force_fast_pitch

    def test_config_id_is_stable_and_distinguishes_configs(self):
        assert AugmentConfig.paper().config_id == AugmentConfig().config_id
        assert len(AugmentConfig().config_id) == 10
        ids = {AugmentConfig.paper().config_id, AugmentConfig.release().config_id,
               AugmentConfig(authors_seeding=False).config_id}
        assert len(ids) == 3
        # Lists (as YAML gives them) are normalised, so they hash like tuples.
        assert AugmentConfig(snr_db=[10, 30]).config_id == AugmentConfig().config_id

    @pytest.mark.parametrize("kwargs, words", [
        ({"tfm_prob": 1.5}, "tfm_prob"),
        ({"pitch_semitones": (6.0, -6.0)}, "pitch_semitones"),
        ({"lowcut_choices": (100, 3000)}, "low cut"),
        ({"eq_bands": 0}, "eq_bands"),
    ])
    def test_bad_config_raises(self, kwargs, words):
        with pytest.raises(ValueError, match=words):
            AugmentConfig(**kwargs)


class TestSampleParams:
    def test_authors_seeding_replays_audiotools_draw_order(self):
        cfg = AugmentConfig.release()
        rs = np.random.RandomState(1234)  # one stream, consumed transform after transform
        low, high = rs.choice(cfg.lowcut_choices), rs.choice(cfg.highcut_choices)
        bp_mask = rs.rand() <= 0.75
        shift, ph_mask = rs.uniform(-np.pi, np.pi), rs.rand() <= 0.75
        semis, _ = rs.uniform(-6, 12), rs.rand()
        amount = rs.uniform(-1, 1)
        eq = -amount * rs.rand(6)
        p = sample_params(1234, cfg)
        assert (p["band_pass"]["low_hz"], p["band_pass"]["high_hz"]) == (low, high)
        assert p["band_pass"]["apply"] == bp_mask and p["shift_phase"]["apply"] == ph_mask
        assert p["shift_phase"]["shift_rad"] == pytest.approx(shift)
        assert p["pitch_shift"]["semitones"] == pytest.approx(semis)
        np.testing.assert_allclose(p["equalizer"]["gains_log10"], eq)

    def test_independent_streams_decouple_stages(self):
        # In the authors' single stream, an extra draw upstream shifts every later draw; with
        # independent streams the noise draws do not depend on the equaliser's band count.
        def noise_snr(**kw):
            return [sample_params(s, AugmentConfig(**kw))["filtered_noise"]["snr_db"] for s in range(20)]
        assert noise_snr(eq_bands=6) != noise_snr(eq_bands=3)
        assert noise_snr(eq_bands=6, authors_seeding=False) == noise_snr(eq_bands=3, authors_seeding=False)
        assert noise_snr(authors_seeding=False) != noise_snr()

    @pytest.mark.parametrize("authors_seeding", [True, False])
    def test_distributions_match_spec(self, authors_seeding):
        cfg = AugmentConfig.paper(authors_seeding=authors_seeding)
        ps = [sample_params(s, cfg) for s in range(2000)]
        lows = np.array([p["band_pass"]["low_hz"] for p in ps])
        highs = np.array([p["band_pass"]["high_hz"] for p in ps])
        assert set(lows) == set(range(100, 1001, 100)) and set(highs) == set(range(2000, 6001, 500))
        # Uniform choice: each of 10 (9) values within 3.5 sigma of 200 (222) counts.
        assert np.all(np.abs(np.unique(lows, return_counts=True)[1] - 200) < 3.5 * math.sqrt(200 * 0.9))
        assert np.all(np.abs(np.unique(highs, return_counts=True)[1] - 222) < 3.5 * math.sqrt(222 * 0.89))
        semis = np.array([p["pitch_shift"]["semitones"] for p in ps])
        assert semis.min() >= -6 and semis.max() <= 6
        np.testing.assert_allclose(np.quantile(semis, [0.25, 0.5, 0.75]), [-3, 0, 3], atol=0.4)
        assert all(p["pitch_shift"]["apply"] for p in ps)
        for stage in ("band_pass", "shift_phase", "equalizer", "filtered_noise"):
            assert np.mean([p[stage]["apply"] for p in ps]) == pytest.approx(0.25, abs=0.04)
        snr = np.array([p["filtered_noise"]["snr_db"] for p in ps])
        assert 10 <= snr.min() and snr.max() <= 30 and abs(snr.mean() - 20) < 0.5
        eq = np.array([p["equalizer"]["gains_log10"] for p in ps])
        assert eq.shape == (2000, 6) and np.abs(eq).max() <= 1 and abs(eq.mean()) < 0.03

    def test_fast_ratios_and_snapping(self):
        ratios = fast_pitch_ratios(44100)
        assert len(ratios) == 80 and min(ratios) == 0.5 and max(ratios) == 2 and 1 not in ratios
        assert all(44100 % r.numerator == 0 and 44100 % r.denominator == 0 for r in ratios)
        for seed in range(200):
            p = sample_params(seed, AugmentConfig.release())["pitch_shift"]
            assert any(math.isclose(p["ratio"], float(r)) for r in ratios)
            # The fast set's widest semitone gap is 0.71, so snapping moves at most half of it.
            assert abs(12 * math.log2(p["ratio"]) - p["semitones"]) <= 0.36
        assert snap_ratio(12.0) == 2 and snap_ratio(-6.0) == min(ratios, key=lambda r: abs(r - 2**-0.5))
        p = sample_params(7, AugmentConfig(force_fast_pitch=False))["pitch_shift"]
        assert p["ratio"] == pytest.approx(2 ** (p["semitones"] / 12))

    @pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "3"])
    def test_bad_seed_raises(self, seed):
        with pytest.raises(ValueError, match="seeds"):
            sample_params(seed, AugmentConfig())


class TestBandPass:
    def test_removes_tones_outside_band_and_keeps_tone_inside(self):
        x = torch.stack([tone(150) + tone(1500) + tone(8000)] * 2)
        y = band_pass(x, SR, [500, 1000], [4000, 3000])
        for row in y:
            assert 20 * math.log10(amplitude_at(row, 150) / 0.5) < -30
            assert 20 * math.log10(amplitude_at(row, 8000) / 0.5) < -30
            assert amplitude_at(row, 1500) == pytest.approx(0.5, rel=1e-3)

    @pytest.mark.parametrize("low, high", [(1000, 4000), (300, 6000)])
    def test_matches_long_julius_windowed_sinc(self, low, high):
        # Reference: the authors' kernels (julius, zeros=2049; 150 k taps per side at 300 Hz)
        # convolved linearly with the input after replicating its edge samples far enough.
        x = drums(0.5, seed=1)[None].double()
        reach = sum(int(2049 / (f / SR) / 2) for f in (low, high))
        padded = torch.nn.functional.pad(x[:, None], (reach, reach), mode="replicate")[:, 0]
        ref = julius.lowpass_filter(julius.highpass_filter(padded, low / SR, zeros=2049, pad=False),
                                    high / SR, zeros=2049, pad=False)
        assert ref.shape == x.shape
        y = band_pass(x, SR, [low], [high])
        assert 10 * torch.log10(ref.square().sum() / (y - ref).square().sum()) > 50


class TestShiftPhase:
    def test_preserves_magnitude_spectrum(self):
        # Hits inside the excerpt (silence at both ends): cutting a hit at the edge is the one
        # thing that lets a phase rotation change the spectrum of what is kept.
        x = F.pad(torch.stack([drums(0.5, seed=s) for s in range(3)]), (4410, 4410))
        y = shift_phase(x, torch.tensor([0.7, -2.0, 3.0]))
        assert not torch.allclose(x, y, atol=1e-2)
        mx, my = torch.fft.rfft(x.double()).abs(), torch.fft.rfft(y.double()).abs()
        assert float((my - mx).norm() / mx.norm()) < 0.03  # per bin
        freqs, edges = torch.fft.rfftfreq(x.shape[-1], 1 / SR), np.geomspace(40, 20000, 25)
        for lo, hi in zip(edges[:-1], edges[1:]):  # per third of an octave
            band = (freqs >= lo) & (freqs < hi)
            ratio = my[:, band].square().sum(-1) / mx[:, band].square().sum(-1)
            assert torch.all((10 * torch.log10(ratio)).abs() < 0.1)

    def test_zero_and_pi(self):
        x = drums(0.25)[None] - drums(0.25).mean()
        torch.testing.assert_close(shift_phase(x, torch.tensor([0.0])), x, atol=1e-6, rtol=0)
        torch.testing.assert_close(shift_phase(x, torch.tensor([math.pi])), -x, atol=1e-5, rtol=0)


class TestPitchShift:
    @pytest.mark.parametrize("ratio", [0.5, 0.8, 1.26, 2.0])
    def test_sine_frequency_moves_by_ratio(self, ratio):
        x = tone(440.0, 1.0)[None]
        y = pitch_shift(x, SR, [ratio])
        assert y.shape == x.shape
        assert peak_frequency(y[0]) / 440.0 == pytest.approx(ratio, rel=0.02)

    def test_drawn_ratio_and_mixed_batch(self):
        ratios = [sample_params(s, AugmentConfig.release())["pitch_shift"]["ratio"] for s in (3, 4)]
        x = torch.stack([tone(300.0), tone(500.0)])
        y = pitch_shift(x, SR, ratios)
        for row, f0, r in zip(y, (300.0, 500.0), ratios):
            assert peak_frequency(row) / f0 == pytest.approx(r, rel=0.02)
        # Items with different rates share one STFT pass but do not interact.
        torch.testing.assert_close(y[1:], pitch_shift(x[1:], SR, ratios[1:]), atol=1e-5, rtol=0)


class TestEqualize:
    def test_flat_gains_are_identity(self):
        x = drums(0.5)[None]
        torch.testing.assert_close(equalize(x, SR, torch.zeros(1, 6)), x, atol=1e-5, rtol=0)

    def test_matches_audiotools_equalizer(self):
        # audiotools: julius SplitBands(sr, 6) bands weighted by 10 ** eq.
        x = torch.stack([drums(0.5, seed=s) for s in range(2)])
        gains = torch.tensor([[-0.9, -0.1, -0.5, 0.0, -0.3, -0.7], [0.2, 0.8, 0.1, 0.5, 0.9, 0.3]])
        ref = (julius.SplitBands(SR, 6)(x) * (10 ** gains).T[:, :, None]).sum(0)
        y = equalize(x, SR, gains)
        assert 10 * torch.log10(ref.square().sum() / (y - ref).square().sum()) > 60


class TestAugmentRhythm:
    CFG = AugmentConfig.release(tfm_prob=1.0)  # every stage runs

    def batch(self, n: int = 3, seconds: float = 0.75, amp: float = 0.3) -> torch.Tensor:
        return torch.stack([drums(seconds, seed=s, amp=amp) for s in range(n)])[:, None]

    def test_deterministic_and_independent_of_batch_composition(self):
        x = self.batch(3)
        y = augment_rhythm(x, SR, [10, 11, 12], self.CFG)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.equal(y, augment_rhythm(x.clone(), SR, [10, 11, 12], self.CFG))
        # Item 1 alone, and with a different neighbour: the same result up to float rounding
        # (batched FFTs may sum in another order).
        alone = augment_rhythm(x[1:2], SR, [11], self.CFG)
        other = augment_rhythm(torch.stack([x[1], x[0] * 0.5]), SR, [11, 99], self.CFG)
        torch.testing.assert_close(alone[0], y[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(other[0], y[1], atol=1e-5, rtol=0)
        assert not torch.allclose(y[0], augment_rhythm(x[:1], SR, [13], self.CFG)[0], atol=1e-3)

    @pytest.mark.parametrize("config", [CFG, AugmentConfig.paper()])
    def test_energy_preserved_and_peak_limited(self, config):
        # Broadband bursts at -26 dB RMS: loud enough that the authors' EPS (1e-8) in the energy
        # match is negligible after a band-pass, quiet enough that no peak limit is needed.
        g = torch.Generator().manual_seed(3)
        env = 0.3 + torch.exp(-(torch.arange(int(0.75 * SR)) % (SR // 4)) / (0.03 * SR))
        x = (0.05 * torch.randn(4, 1, env.shape[0], generator=g) * env / env.square().mean().sqrt())
        y = augment_rhythm(x, SR, [0, 1, 2, 3], config)
        torch.testing.assert_close(energy(y), energy(x), rtol=0.01, atol=0)
        assert y.abs().max() <= 1.0

    def test_loud_input_is_peak_limited(self):
        x = self.batch(2) / self.batch(2).abs().amax(dim=-1, keepdim=True)  # peak exactly 1
        y = augment_rhythm(x, SR, [5, 6], self.CFG)
        assert y.abs().max() <= 1.0 + 1e-6 and torch.isfinite(y).all()

    def test_nothing_applied_is_identity(self):
        x = self.batch(2)
        y = augment_rhythm(x, SR, [1, 2], AugmentConfig(tfm_prob=0.0, pitch_prob=0.0))
        assert torch.equal(y, x)

    def test_float64_in_float64_out(self):
        y = augment_rhythm(self.batch(1).double(), SR, [4], self.CFG)
        assert y.dtype == torch.float64 and torch.isfinite(y).all()

    def test_extras_reverb_and_background_noise(self):
        x = self.batch(2)
        g = torch.Generator().manual_seed(0)
        t = torch.arange(SR // 2) / SR
        rir = torch.randn(SR // 2, generator=g) * torch.exp(-t / 0.1)
        noise = torch.randn(2, 1, SR // 4, generator=g)  # shorter than the audio: zero-padded
        cfg = AugmentConfig.release(tfm_prob=0.0, pitch_prob=0.0, reverb=True, background_noise=True)
        y = augment_rhythm(x, SR, [1, 2], cfg, rir=rir, noise=noise)
        assert not torch.allclose(y, x, atol=1e-3)
        torch.testing.assert_close(energy(y), energy(x), rtol=0.01, atol=0)
        assert torch.equal(y, augment_rhythm(x, SR, [1, 2], cfg, rir=rir, noise=noise))
        p = sample_params(1, cfg)
        assert 0 <= p["reverb"]["drr_db"] <= 30 and 10 <= p["background_noise"]["snr_db"] <= 30
        with pytest.raises(ValueError, match="rir"):
            augment_rhythm(x, SR, [1, 2], cfg, noise=noise)
        with pytest.raises(ValueError, match="config has it off"):
            augment_rhythm(x, SR, [1, 2], self.CFG, rir=rir)

    @pytest.mark.parametrize("audio, seeds, words", [
        (torch.zeros(2, 4410), [0, 1], "shape"),
        (torch.zeros(2, 2, 4410), [0, 1], "mono"),
        (torch.zeros(0, 1, 4410), [], "empty"),
        (torch.zeros(1, 1, 0), [0], "empty"),
        (torch.full((1, 1, 4410), float("nan")), [0], "NaN"),
        (torch.zeros(1, 1, 100), [0], "at least"),
        (torch.zeros(2, 1, 4410), [0], "2 seeds|1 seeds"),
        (torch.zeros(1, 1, 4410, dtype=torch.int16), [0], "floating"),
        (np.zeros((1, 1, 4410)), [0], "torch.Tensor"),
    ])
    def test_bad_input_raises_value_error(self, audio, seeds, words):
        with pytest.raises(ValueError, match=words):
            augment_rhythm(audio, SR, seeds, self.CFG)

    @pytest.mark.gpu
    def test_cuda_matches_cpu(self):
        x = self.batch(4)
        cpu = augment_rhythm(x, SR, [0, 1, 2, 3], self.CFG)
        gpu = augment_rhythm(x.cuda(), SR, [0, 1, 2, 3], self.CFG).cpu()
        # Float rounding differs between devices; the phase vocoder spreads it a little.
        assert 10 * torch.log10(cpu.square().sum() / (gpu - cpu).square().sum()) > 40

    def test_sample_rate_below_high_cut_raises(self):
        with pytest.raises(ValueError, match="Nyquist"):
            augment_rhythm(torch.zeros(1, 1, 8000), 8000, [0], self.CFG)
