"""Rhythm features (SPEC section 2): shapes, semantics on constructed signals, loudness, errors."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest
import torch

from synth_audio import SR, click_track, hat, kick, open_hat, place, sine_kick
from tria.features import (
    RhythmFeatureConfig,
    align_features,
    integrated_loudness,
    mel_filterbank,
    moving_average,
    rhythm_features,
)

PRESETS = {
    "default": RhythmFeatureConfig(),
    "paper": RhythmFeatureConfig.paper(),
    "release": RhythmFeatureConfig.release(),
    "paper_1b": RhythmFeatureConfig.paper(n_bands=1),
    "paper_4b": RhythmFeatureConfig.paper(n_bands=4),
    "fixed_2b": RhythmFeatureConfig(adaptive=False),
}


class TestShapes:
    @pytest.mark.parametrize("name", sorted(PRESETS))
    def test_shape_dtype_and_grid(self, name):
        cfg = PRESETS[name]
        x = torch.from_numpy(click_track([0.25, 1.0, 1.5, 2.2], 3.0))[None, None].repeat(2, 1, 1)
        f = rhythm_features(x, SR, cfg)
        assert f.shape == (2, cfg.n_bands, cfg.n_frames(x.shape[-1], SR))
        assert f.dtype == torch.float32
        assert float(f.min()) >= 0.0 and float(f.max()) <= 1.0
        grid = f * (cfg.quantization_levels - 1)
        assert torch.allclose(grid, grid.round(), atol=1e-5)

    def test_frame_counts_match_spec(self):
        # SPEC 2.3: 6 s gives 517 frames at 44.1 kHz / 512 and 501 at 16 kHz / 192.
        assert RhythmFeatureConfig.paper().n_frames(264_600, SR) == 517
        assert RhythmFeatureConfig.release().n_frames(264_600, SR) == 501
        x = torch.zeros(1, 1, 264_600)
        x[..., ::4410] = 0.5
        assert rhythm_features(x, SR, RhythmFeatureConfig.release()).shape[-1] == 501

    def test_deterministic_and_batch_independent(self):
        a = torch.from_numpy(click_track([0.3, 0.9], 2.0))[None, None]
        b = torch.from_numpy(click_track([0.5, 1.4], 2.0, freq=300.0))[None, None]
        cfg = RhythmFeatureConfig.release()
        both = rhythm_features(torch.cat([a, b]), SR, cfg)
        assert torch.equal(both, rhythm_features(torch.cat([a, b]), SR, cfg))
        assert torch.equal(both[:1], rhythm_features(a, SR, cfg))
        assert torch.equal(both[1:], rhythm_features(b, SR, cfg))

    def test_stereo_and_other_input_rates(self):
        y = click_track([0.5, 1.0, 1.5], 2.0, sr=22_050)
        x = torch.from_numpy(np.stack([y, y]))[None]  # (1, 2, N) identical channels
        cfg = RhythmFeatureConfig.release()
        f_stereo = rhythm_features(x, 22_050, cfg)
        f_mono = rhythm_features(x[:, :1], 22_050, cfg)
        assert torch.equal(f_stereo, f_mono)
        assert f_stereo.shape[-1] == 1 + (2 * 16_000) // 192


class TestSemantics:
    @pytest.mark.parametrize("name", ["default", "release", "paper"])
    def test_click_track_peaks_at_clicks(self, name):
        cfg = PRESETS[name]
        times = [0.5, 1.25, 2.0, 2.75, 3.5]
        x = torch.from_numpy(click_track(times, 4.0))[None, None]
        f = rhythm_features(x, SR, cfg)[0].sum(0)  # (F,) all bands
        fps = cfg.sample_rate / cfg.hop_length
        smooth = 1 + (round((cfg.post_smooth_ms or 0) / 1000 * fps) if cfg.post_smooth_ms else 0)
        for t in times:
            i = round(t * fps)
            lo, hi = max(0, i - 1), i + smooth + 1
            peak = int(torch.argmax(f[max(0, i - 2 * smooth - 2): i + 2 * smooth + 3])) + max(0, i - 2 * smooth - 2)
            assert lo - smooth <= peak <= hi, f"{name}: click at {t}s peaks at frame {peak}, expected ~{i}"
        # Between clicks (away from every click by > 150 ms) the features are near their floor.
        quiet = [j for j in range(len(f)) if min(abs(j / fps - t) for t in times) > 0.15 + (cfg.post_smooth_ms or 0) / 1000]
        floor = float(f[quiet].max())
        assert floor <= float(f.max()) * 0.5 + 1e-6, f"{name}: between-click level {floor} vs max {float(f.max())}"

    @pytest.mark.parametrize("name,margin", [("default", 0.5), ("paper", 0.25)])
    def test_two_band_split_separates_kick_and_hat(self, name, margin):
        # Kicks on beats 1 and 3, open hats on the off-beats: each instrument dominates its own band.
        kicks = [0.0, 1.0, 2.0, 3.0]
        hats = [0.5, 1.5, 2.5, 3.5]
        y = place([(t, sine_kick()) for t in kicks] + [(t, open_hat(seed=i)) for i, t in enumerate(hats)], 4.0)
        cfg = PRESETS[name]
        f = rhythm_features(torch.from_numpy(y)[None, None], SR, cfg)[0]  # (2, F)
        fps = cfg.sample_rate / cfg.hop_length

        def at(times, band):
            return np.mean([float(f[band, round(t * fps): round(t * fps) + 6].max()) for t in times])

        assert at(kicks, 0) > at(hats, 0) + margin, "low band should respond to kicks, not hats"
        assert at(hats, 1) > at(kicks, 1) + margin, "high band should respond to hats, not kicks"

    def test_adaptive_edges_follow_the_spectrum(self):
        # A low-only clip and a high-only clip get different band edges; fixed edges do not move.
        from tria.features import band_cuts, mel_spectrogram
        low = torch.from_numpy(place([(t, kick()) for t in [0.1, 0.6, 1.1]], 1.5))[None, None]
        high = torch.from_numpy(place([(t, hat()) for t in [0.1, 0.6, 1.1]], 1.5))[None, None]
        cfg = RhythmFeatureConfig.paper()
        mels = [mel_spectrogram(x, SR, 80, 1024, 512) for x in (low, high)]
        cut_low, cut_high = (int(band_cuts(m, cfg)[0, 1]) for m in mels)
        assert cut_low < cut_high
        fixed = RhythmFeatureConfig(adaptive=False, band_edges_hz=(1000.0,))
        assert int(band_cuts(mels[0], fixed)[0, 1]) == int(band_cuts(mels[1], fixed)[0, 1])

    def test_rms_option_differs_from_lufs_only_by_level(self):
        x = torch.from_numpy(click_track([0.2, 0.7, 1.2], 1.5))[None, None]
        a = rhythm_features(x, SR, RhythmFeatureConfig.release())
        b = rhythm_features(x, SR, RhythmFeatureConfig.release(loudness_norm="rms"))
        # The quantile normalisation removes most of a level change: same peaks.
        assert (a.argmax(-1) == b.argmax(-1)).all()


class TestBuildingBlocks:
    def test_loudness_matches_pyloudnorm(self, rng):
        for scale in (0.01, 0.1, 0.5):
            y = (rng.standard_normal((2, SR * 3)) * scale).astype(np.float64)
            y[:, : SR] *= 0.01  # quiet first second exercises the relative gate
            ours = float(integrated_loudness(torch.from_numpy(y)[None].float(), SR)[0])
            ref = pyloudnorm.Meter(SR).integrated_loudness(y.T)
            assert abs(ours - ref) < 0.05, (scale, ours, ref)

    def test_loudness_of_silence_is_clamped(self):
        assert float(integrated_loudness(torch.zeros(1, 1, SR), SR)[0]) == -70.0

    def test_mel_filterbank_properties(self):
        fb = mel_filterbank(16_000, 384, 40)
        assert fb.shape == (40, 193) and fb.dtype == np.float32
        assert (fb >= 0).all()
        # Filter centres increase monotonically and each filter has a single peak region.
        centres = fb.argmax(1)
        assert (np.diff(centres) >= 0).all()
        # Slaney area normalisation: each triangle's area in Hz is ~1 (2 / bandwidth * bandwidth / 2).
        hz = np.fft.rfftfreq(384, 1 / 16_000)
        areas = fb.sum(1) * (hz[1] - hz[0])
        assert np.allclose(areas[5:], 1.0, atol=0.15)

    def test_moving_average_keeps_length_and_mean(self):
        x = torch.rand(2, 3, 50)
        for w in (1, 2, 5, 8):
            y = moving_average(x, w)
            assert y.shape == x.shape
        y = moving_average(torch.ones(1, 1, 20), 5)
        assert torch.allclose(y, torch.ones_like(y))

    def test_align_features_nearest(self):
        f = torch.arange(517, dtype=torch.float32)[None, None]
        g = align_features(f, 516)
        assert g.shape == (1, 1, 516)
        # nearest takes floor(i * 517 / 516)
        assert torch.equal(g[0, 0], torch.tensor([float(i * 517 // 516) for i in range(516)]))


class TestErrors:
    @pytest.mark.parametrize("bad,match", [
        (torch.zeros(0), "shape"),
        (torch.zeros(SR), "shape"),
        (torch.zeros(1, 1, 0), "empty"),
        (torch.full((1, 1, SR), float("nan")), "NaN"),
        (torch.zeros(1, 1, 100), "too short"),
    ])
    def test_bad_input_raises_value_error(self, bad, match):
        with pytest.raises(ValueError, match=match):
            rhythm_features(bad, SR, RhythmFeatureConfig())

    def test_silence_gives_zeros_not_nan(self):
        f = rhythm_features(torch.zeros(1, 1, SR), SR, RhythmFeatureConfig.release())
        assert torch.isfinite(f).all() and float(f.max()) == 0.0

    def test_bad_config_raises(self):
        with pytest.raises(ValueError, match="n_bands"):
            RhythmFeatureConfig(n_bands=0)
        with pytest.raises(ValueError, match="quantization_levels"):
            RhythmFeatureConfig(quantization_levels=1)
        with pytest.raises(ValueError, match="band_edges_hz"):
            RhythmFeatureConfig(n_bands=3, band_edges_hz=(100.0,))

    def test_config_roundtrip_and_id(self):
        cfg = RhythmFeatureConfig.release(n_bands=3)
        assert RhythmFeatureConfig.from_dict(cfg.to_dict()) == cfg
        assert cfg.config_id == RhythmFeatureConfig.release(n_bands=3).config_id
        assert cfg.config_id != RhythmFeatureConfig.release().config_id
