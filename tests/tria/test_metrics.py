"""tria.metrics on constructed cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from synth_audio import SR, click_track, hat, place, sine_kick
from tria.features import RhythmFeatureConfig
from tria.metrics import (
    EmbedderUnavailable,
    OnsetConfig,
    SpectralEmbedder,
    bootstrap_ci,
    cosine_similarity,
    detect_onsets,
    embed_clips,
    feature_correlation,
    frechet_distance,
    frechet_distance_from_stats,
    get_embedder,
    list_embedders,
    match_events,
    onset_f1,
    pick_peaks,
    rhythm_correlation,
    vggish_examples,
)

ONSETS = np.array([0.10, 0.35, 0.60, 0.85, 1.20, 1.45, 1.70, 1.95])


class TestOnsetF1:
    def test_identical_onsets_score_one(self):
        s = onset_f1(ONSETS, ONSETS)
        assert (s.precision, s.recall, s.f1, s.n_matched) == (1.0, 1.0, 1.0, 8)

    def test_shift_inside_tolerance_still_matches(self):
        assert onset_f1(ONSETS, ONSETS + 0.049).f1 == 1.0
        assert onset_f1(ONSETS, ONSETS - 0.049).f1 == 1.0

    def test_all_shifted_beyond_tolerance_score_zero(self):
        s = onset_f1(ONSETS, ONSETS + 0.06)
        assert (s.precision, s.recall, s.f1, s.n_matched) == (0.0, 0.0, 0.0, 0)

    def test_half_matched(self):
        est = np.sort(np.concatenate([ONSETS[:4] + 0.02, ONSETS[4:] + 0.11]))  # 4 of 8 within 50 ms
        s = onset_f1(ONSETS, est)
        assert (s.precision, s.recall, s.f1, s.n_matched) == (0.5, 0.5, 0.5, 4)

    def test_precision_and_recall_differ(self):
        s = onset_f1(ONSETS, ONSETS[:2])  # 2 estimates, both right, 6 missed
        assert s.precision == 1.0 and s.recall == 0.25 and s.f1 == pytest.approx(2 * 0.25 / 1.25)

    def test_matching_is_one_to_one(self):
        # two estimates within the window of one reference: only one can count
        s = onset_f1([1.0], [0.98, 1.02])
        assert s.n_matched == 1 and s.precision == 0.5 and s.recall == 1.0

    def test_greedy_needs_the_earliest_estimate(self):
        # ref 1.0 could take 1.04 or 0.97; taking 1.04 would leave ref 1.08 unmatched
        assert len(match_events([1.0, 1.08], [0.97, 1.04])) == 2

    def test_empty_lists_follow_mir_eval(self):
        assert onset_f1([], ONSETS).f1 == 0.0 and onset_f1(ONSETS, []).f1 == 0.0
        assert onset_f1([], []).f1 == 0.0

    def test_unsorted_input_is_an_error(self):
        with pytest.raises(ValueError, match="sorted"):
            onset_f1([0.5, 0.1], [0.1])

    def test_greedy_matching_is_maximum(self, rng):
        """Same matching size as a Hopcroft-Karp maximum matching (what mir_eval uses) on random events."""
        for _ in range(300):
            ref = np.sort(rng.uniform(0, 2, rng.integers(0, 12)))
            est = np.sort(rng.uniform(0, 2, rng.integers(0, 12)))
            pairs = match_events(ref, est, 0.05)
            assert all(abs(ref[i] - est[j]) <= 0.05 for i, j in pairs)
            assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
            if len(ref) and len(est):
                graph = csr_matrix((np.abs(ref[:, None] - est[None, :]) <= 0.05).astype(np.int8))
                best = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
            else:
                best = 0
            assert len(pairs) == best


class TestOnsetDetector:
    def test_click_track_within_one_frame(self):
        y = click_track(ONSETS, 2.3)
        found = detect_onsets(y, SR)
        assert len(found) == len(ONSETS)
        assert np.abs(found - ONSETS).max() <= 1 / OnsetConfig().fps + 1e-9

    def test_other_sample_rate_and_drum_sounds(self):
        sounds = [sine_kick() if i % 2 == 0 else hat(seed=i) for i in range(len(ONSETS))]
        y = place(list(zip(ONSETS, sounds)), 2.3)
        y22 = y[::2]  # 22.05 kHz (the sounds are band-limited enough for a plain decimation here)
        found = detect_onsets(y22, SR // 2)
        assert len(found) == len(ONSETS) and np.abs(found - ONSETS).max() <= 0.01 + 1e-9

    def test_level_invariant(self):
        y = click_track(ONSETS, 2.3)
        np.testing.assert_allclose(detect_onsets(0.01 * y, SR), detect_onsets(y, SR))

    def test_silence_has_no_onsets(self):
        assert detect_onsets(np.zeros(SR), SR).size == 0
        assert detect_onsets(1e-6 * np.random.default_rng(0).standard_normal(SR), SR).size == 0

    def test_peak_picking_wait(self):
        env = np.zeros(100)
        env[[20, 22, 60]] = [1.0, 0.9, 1.0]  # 22 is within 30 ms of 20 and not a local maximum
        np.testing.assert_array_equal(pick_peaks(env), [20, 60])

    def test_bad_audio(self):
        with pytest.raises(ValueError, match="NaN"):
            detect_onsets(np.full(1000, np.nan), SR)
        with pytest.raises(ValueError, match="empty"):
            detect_onsets(np.zeros(0), SR)


class TestFeatureCorrelation:
    def test_identical_tracks_correlate_one(self, rng):
        f = rng.random((3, 200))
        np.testing.assert_allclose(feature_correlation(f, f), [1.0, 1.0, 1.0])

    def test_inverted_and_lengths(self, rng):
        f = rng.random((2, 100))
        r = feature_correlation(f, np.concatenate([1 - f, rng.random((2, 5))], axis=1))  # extra frames cut
        np.testing.assert_allclose(r, [-1.0, -1.0])

    def test_constant_band_is_nan(self, rng):
        f = rng.random((2, 50))
        g = f.copy()
        g[1] = 0.5
        r = feature_correlation(f, g)
        assert r[0] == pytest.approx(1.0) and np.isnan(r[1])

    def test_shape_errors(self):
        with pytest.raises(ValueError, match="same F"):
            feature_correlation(np.zeros((2, 10)), np.zeros((3, 10)))

    def test_rhythm_correlation_of_same_audio(self):
        y = place([(t, sine_kick() if i % 2 else hat()) for i, t in enumerate(ONSETS)], 2.3)
        r = rhythm_correlation(y, y.copy(), SR, RhythmFeatureConfig.release())
        np.testing.assert_allclose(r, [1.0, 1.0], atol=1e-6)
        shifted = np.roll(y, int(0.12 * SR))
        assert np.nanmax(rhythm_correlation(y, shifted, SR, RhythmFeatureConfig.release())) < 0.9


class TestEmbeddings:
    def clips(self, n=4, seconds=2.0):
        hats = [place([(t, hat(seed=i)) for t in ONSETS if t < seconds - 0.1], seconds) for i in range(n)]
        return [h + 0.3 * sine_kick_at(i, seconds) for i, h in enumerate(hats)]

    def test_spectral_shapes_and_level_invariance(self):
        e = SpectralEmbedder()
        y = self.clips(1, 2.5)[0]
        out = e(y)
        assert out.shape == (2, e.dim) == (2, 146)  # two whole 1 s windows
        np.testing.assert_allclose(e(0.05 * y), out, rtol=1e-4, atol=1e-3)  # float32 input rounding
        assert e(y[: SR // 4]).shape == (1, 146)  # shorter than a window: one window

    def test_same_audio_cosine_one_and_fd_zero(self):
        e = SpectralEmbedder()
        clips = self.clips(6, 3.0)
        a = np.concatenate(embed_clips(e, clips, SR))
        b = np.concatenate(embed_clips(e, [c.copy() for c in clips], SR))
        assert cosine_similarity(a, b) == pytest.approx(1.0, abs=1e-12)
        assert frechet_distance(a, b) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(a, rowvar=False)))

    def test_different_timbre_is_further(self):
        e = SpectralEmbedder()
        hats = np.concatenate(embed_clips(e, self.clips(4, 2.0), SR))
        kicks = np.concatenate(embed_clips(e, [place([(t, sine_kick()) for t in ONSETS[:6]], 2.0)], SR))
        noise = np.concatenate(embed_clips(e, [np.random.default_rng(1).standard_normal(2 * SR)], SR))
        mu, sd = hats.mean(0), hats.std(0) + 1e-8
        z = lambda x: (x - mu) / sd  # noqa: E731
        assert cosine_similarity(z(hats[:1]), z(hats[1:2])) > cosine_similarity(z(hats[:1]), z(kicks))
        others = np.concatenate([kicks, noise])
        assert frechet_distance(z(hats), z(hats[::-1])) < frechet_distance(z(hats), z(others))

    def test_cosine_known_values(self):
        assert cosine_similarity([1, 0], [0, 2]) == pytest.approx(0.0)
        assert cosine_similarity([1, 2], [-2, -4]) == pytest.approx(-1.0)
        assert np.isnan(cosine_similarity([0, 0], [1, 0]))

    def test_registry_and_plugins(self):
        assert {"spectral", "vggish", "clap"} <= set(list_embedders())
        assert isinstance(get_embedder("spectral"), SpectralEmbedder)
        plugged = get_embedder(lambda y: [y.mean(), y.std()], sample_rate=16_000, name="stats")
        out = embed_clips(plugged, [np.ones(SR)], SR)  # resampled to the plugin's 16 kHz
        assert out[0].shape == (1, 2) and out[0][0, 0] == pytest.approx(1.0, abs=1e-3)
        with pytest.raises(ValueError, match="sample_rate"):
            get_embedder(lambda y: y)
        with pytest.raises(ValueError, match="unknown embedder"):
            get_embedder("openl3")

    def test_weight_plugins_never_download(self, tmp_path):
        for name in ("vggish", "clap"):
            with pytest.raises(EmbedderUnavailable, match="checkpoint"):
                get_embedder(name)
            with pytest.raises(EmbedderUnavailable, match="not found"):
                get_embedder(name, checkpoint=str(tmp_path / "missing.pth"))
        bad = tmp_path / "bad.pth"
        torch.save({"x": torch.zeros(1)}, bad)
        with pytest.raises(EmbedderUnavailable, match="VGGish state dict"):
            get_embedder("vggish", checkpoint=str(bad))

    def test_vggish_front_end(self):
        ex = vggish_examples(np.random.default_rng(0).standard_normal(16_000 * 2))
        assert ex.shape == (2, 96, 64) and np.isfinite(ex).all()
        assert vggish_examples(np.zeros(100)).shape == (1, 96, 64)  # short clips are padded to one example


def sine_kick_at(i: int, seconds: float) -> np.ndarray:
    return place([(0.05 + 0.1 * i, sine_kick())], seconds)


class TestFrechet:
    def test_known_mean_shift(self, rng):
        x = rng.standard_normal((400, 5))
        shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
        assert frechet_distance(x, x + shift) == pytest.approx(shift @ shift, rel=1e-6)

    def test_one_dimensional_closed_form(self):
        # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2
        one, four, three, nine = (np.array(v) for v in ([1.0], [[4.0]], [3.0], [[9.0]]))
        fd = frechet_distance_from_stats(one, four, three, nine)
        assert fd == pytest.approx(4.0 + 1.0)

    def test_singular_covariance_same_set(self, rng):
        x = rng.standard_normal((10, 40))  # fewer samples than dimensions: rank-deficient covariance
        assert frechet_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-4)
        assert frechet_distance(x, x + 1.0) == pytest.approx(40.0, rel=1e-3)

    def test_needs_two_samples(self):
        with pytest.raises(ValueError, match="n >= 2"):
            frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


class TestBootstrap:
    def test_constant_values(self):
        assert bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5, 10)

    def test_mean_and_interval(self, rng):
        v = rng.normal(1.0, 0.1, 400)
        mean, low, high, n = bootstrap_ci(v, n_boot=500)
        assert mean == pytest.approx(v.mean()) and n == 400
        assert low < mean < high and high - low == pytest.approx(2 * 1.96 * v.std() / 20, rel=0.25)

    def test_clusters_and_nan(self):
        # cluster 0 has two rows, cluster 1 one; NaN dropped; one cluster -> no spread
        mean, low, high, n = bootstrap_ci([1.0, 1.0, np.nan, 4.0], clusters=[0, 0, 1, 1])
        assert mean == pytest.approx(2.0) and n == 3 and low >= 1.0 and high <= 4.0
        assert bootstrap_ci([1.0, 3.0], clusters=[7, 7])[1:3] == (2.0, 2.0)
        assert np.isnan(bootstrap_ci([np.nan])[0])
