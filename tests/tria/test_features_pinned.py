"""The faster rhythm-feature code (issue 13) pinned to the code it replaced, on varied signals.

What changed, and what is asserted:

* ``integrated_loudness`` sums each 400 ms block from four 100 ms chunk sums instead of squaring
  julius' overlapping block view. Only the order of float64 additions of non-negative terms
  differs: block energies agree to 1e-13 relative (asserted), and the float32 loudness that the
  features use is bit-identical (asserted) on every signal here.
* The input check uses min/max instead of ``isfinite``: exact (NaN and Inf reach min or max).
* On the CPU, loudness, gain, peak limit and the STFT run over the batch in cache-sized groups of
  items: items are independent, so the output is bit-identical for any grouping (asserted).

The quantised features of both presets are bit-identical to the previous implementation (asserted).
"""

from __future__ import annotations

import math

import julius
import numpy as np
import pytest
import scipy.signal
import torch
from pyloudnorm.iirfilter import IIRfilter
from synth_audio import SR, click_track, hat, kick, place

import tria.features as tf
from tria.features import RhythmFeatureConfig, integrated_loudness, rhythm_features

# ----------------------------------------------------------------------------------------------
# The previous implementation (tria/features.py at 783c2a3), kept verbatim as the pin
# ----------------------------------------------------------------------------------------------


def old_block_energy(audio: torch.Tensor, sample_rate: int, block_s: float = 0.4) -> torch.Tensor:
    """(B, C, N) -> (B, C, n_blocks) float64 mean squares, as the previous integrated_loudness."""
    x = audio.detach().to("cpu", torch.float64).numpy()
    n_min = int(0.5 * sample_rate)
    if x.shape[-1] < n_min:
        x = np.pad(x, [(0, 0), (0, 0), (0, n_min - x.shape[-1])])
    for f in (IIRfilter(4.0, 1 / math.sqrt(2), 1500.0, sample_rate, "high_shelf"),
              IIRfilter(0.0, 0.5, 38.0, sample_rate, "high_pass")):
        x = f.passband_gain * scipy.signal.lfilter(f.b, f.a, x, axis=-1)
    block = int(block_s * sample_rate)
    blocks = julius.core.unfold(torch.from_numpy(x), block, int(block * 0.25))
    return blocks.square().sum(-1) / block


def old_integrated_loudness(audio: torch.Tensor, sample_rate: int, block_s: float = 0.4) -> torch.Tensor:
    z = old_block_energy(audio, sample_rate, block_s)
    with np.errstate(divide="ignore"):
        lk = -0.691 + 10 * torch.log10(z.sum(1))

        def gated_mean(keep: torch.Tensor) -> torch.Tensor:
            return (z * keep[:, None]).sum(-1) / keep.sum(-1, keepdim=True)

        above_abs = lk > -70.0
        gamma_r = -0.691 + 10 * torch.log10(gated_mean(above_abs).sum(1)) - 10.0
        keep = above_abs & (lk > gamma_r[:, None])
        zg = torch.nan_to_num(gated_mean(keep), nan=0.0)
        lufs = -0.691 + 10 * torch.log10(zg.sum(1))
    return lufs.clamp_min(tf.MIN_LOUDNESS_DB).float().to(audio.device)


def old_peak_limit(audio: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    m = audio.abs().amax(dim=-1, keepdim=True)
    return audio * torch.where(m > peak, peak / m.clamp_min(tf.EPS), torch.ones_like(m))


def old_mel_spectrogram(audio, sample_rate, n_mels, window_length, hop_length):
    B, C, N = audio.shape
    window = torch.hann_window(window_length, periodic=True, dtype=audio.dtype, device=audio.device)
    spec = torch.stft(audio.reshape(B * C, N), n_fft=window_length, hop_length=hop_length, window=window,
                      center=True, pad_mode="reflect", return_complex=True).abs()
    fb = torch.from_numpy(tf.mel_filterbank(sample_rate, window_length, n_mels)).to(audio)
    mel = torch.einsum("mf,bft->bmt", fb, spec)
    return mel.reshape(B, C, n_mels, -1).mean(1)


@pytest.fixture
def old_features(monkeypatch):
    """rhythm_features as it was: the module's helpers swapped for their previous versions."""
    def run(audio, sr, cfg):
        with monkeypatch.context() as m:
            m.setattr(tf, "integrated_loudness", old_integrated_loudness)
            m.setattr(tf, "peak_limit", old_peak_limit)
            m.setattr(tf, "mel_spectrogram", old_mel_spectrogram)
            return tf.rhythm_features(audio, sr, cfg)
    return run


# ----------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------


def drums(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    events = [(t, kick(sr)) for t in np.arange(0.0, seconds - 0.3, 0.5)]
    if sr >= 16_000:  # the hat is noise above 6 kHz
        events += [(t, hat(sr, seed=seed)) for t in np.arange(0.25, seconds - 0.1, 0.25)]
    return place(events, seconds, sr=sr) + 0.003 * rng.standard_normal(int(seconds * sr)).astype(np.float32)


def varied_batch(seconds: float = 3.0, sr: int = SR) -> torch.Tensor:
    """(8, 2, N) stereo items: silence, clipping, quiet, loud, quiet-then-loud, near the gates."""
    n = int(seconds * sr)
    rng = np.random.default_rng(7)
    a, b = drums(seconds, 1, sr), drums(seconds, 2, sr)
    items = [
        np.zeros((2, n)),  # digital silence: every block gated out
        np.clip(8 * np.stack([a, b]), -1, 1),  # hard clipping at full scale
        4.0 * np.stack([a, a[::-1]]),  # over full scale: the peak limiter acts
        10 ** (-50 / 20) * np.stack([a, b]),  # quiet
        np.stack([a, 0 * b]),  # one silent channel
        np.concatenate([1e-4 * rng.standard_normal((2, n // 2)), np.stack([b, a])[:, n // 2:]], -1),
        10 ** (-62 / 20) * rng.standard_normal((2, n)),  # near the -70 LUFS absolute gate
        np.stack([click_track([0.1, 0.9, 1.7], seconds, sr=sr)] * 2),  # sparse transients
    ]
    x = torch.from_numpy(np.stack(items)).float()
    assert torch.isfinite(x).all()
    return x


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------


class TestLoudnessPinned:
    @pytest.mark.parametrize("sr,seconds", [(SR, 3.0), (16_000, 3.0), (48_000, 1.3), (22_050, 0.7),
                                            (SR, 0.3), (16_000, 0.5), (8_005, 1.1)])
    def test_block_energies_agree_and_loudness_is_bit_identical(self, sr, seconds):
        # 8005 Hz: block 3202 and step 800 are not multiples of each other (2-sample chunks);
        # 0.3 s and 0.5 s: shorter than and exactly the 0.5 s minimum; 0.7 s: a padded last block.
        x = varied_batch(seconds, sr)
        old_z = old_block_energy(x, sr)
        block = int(0.4 * sr)
        xp = x.double().numpy()
        if xp.shape[-1] < int(0.5 * sr):
            xp = np.pad(xp, [(0, 0), (0, 0), (0, int(0.5 * sr) - xp.shape[-1])])
        for b, a, _ in tf._k_weighting(sr):
            xp = scipy.signal.lfilter(b, a, xp, axis=-1)
        new_z = torch.from_numpy(tf._block_energy(xp, block, int(block * 0.25)))
        assert new_z.shape == old_z.shape
        assert torch.allclose(new_z, old_z, rtol=1e-13, atol=0.0)
        assert torch.equal(integrated_loudness(x, sr), old_integrated_loudness(x, sr))

    def test_mono_and_long_blocks(self):
        x = varied_batch(2.0)[:, :1]
        assert torch.equal(integrated_loudness(x, SR), old_integrated_loudness(x, SR))
        assert torch.equal(integrated_loudness(x, SR, block_s=1.0), old_integrated_loudness(x, SR, block_s=1.0))

    def test_silence_and_gates(self):
        x = varied_batch(2.0)
        lufs = integrated_loudness(x, SR)
        assert float(lufs[0]) == -70.0  # silence
        assert -70.0 < float(lufs[3]) < -40.0  # quiet item is measured, not gated away
        assert float(lufs[1]) > float(lufs[3]) + 30

    def test_grouping_does_not_change_the_result(self, monkeypatch):
        x = varied_batch(2.0)
        whole = integrated_loudness(x, SR)
        monkeypatch.setattr(tf, "CPU_PASS_SAMPLES", 1)  # one item per pass
        assert torch.equal(integrated_loudness(x, SR), whole)


class TestFeaturesPinned:
    @pytest.mark.parametrize("preset", ["paper", "release", "paper_4b"])
    def test_quantised_features_bit_identical(self, preset, old_features):
        cfg = {"paper": RhythmFeatureConfig.paper(), "release": RhythmFeatureConfig.release(),
               "paper_4b": RhythmFeatureConfig.paper(n_bands=4)}[preset]
        x = varied_batch(3.0)
        new = rhythm_features(x, SR, cfg)
        assert torch.equal(new, old_features(x, SR, cfg))
        assert new[1:].amax() > 0  # the comparison is not between two all-zero outputs

    def test_short_clip_and_other_rate(self, old_features):
        cfg = RhythmFeatureConfig.release()
        x = varied_batch(0.3, 22_050)[1:4]
        assert torch.equal(rhythm_features(x, 22_050, cfg), old_features(x, 22_050, cfg))

    @pytest.mark.parametrize("pass_samples", [1, 4 * 2 * SR, 2**40])
    def test_any_grouping_of_items_gives_the_same_features(self, pass_samples, monkeypatch):
        x = varied_batch(2.0)
        cfg = RhythmFeatureConfig.paper()
        reference = rhythm_features(x, SR, cfg)
        monkeypatch.setattr(tf, "CPU_PASS_SAMPLES", pass_samples)
        assert torch.equal(rhythm_features(x, SR, cfg), reference)
        assert len(tf._cpu_chunks(x[:, :1])) == {1: 8, 4 * 2 * SR: 2, 2**40: 1}[pass_samples]  # mono passes

    def test_peak_limit_matches_abs_amax(self):
        x = varied_batch(1.0) * torch.linspace(0.5, 3.0, 8)[:, None, None]
        x[2, 1, 100] = -7.0  # negative peak
        assert torch.equal(tf.peak_limit(x), old_peak_limit(x))
        assert torch.equal(tf.peak_limit(x, 0.25), old_peak_limit(x, 0.25))

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_non_finite_sample_anywhere_is_rejected(self, bad):
        x = varied_batch(1.0)
        x[5, 1, 1234] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            rhythm_features(x, SR, RhythmFeatureConfig.paper())


def test_block_energy_matches_direct_sums_on_random_lengths():
    rng = np.random.default_rng(3)
    for n in (1, 99, 100, 101, 450, 1000, 1234):
        x = rng.standard_normal((2, 3, n))
        block, step = 40, 10
        n_blocks = math.ceil((max(n, block) - block) / step) + 1
        xp = np.pad(x, [(0, 0), (0, 0), (0, (n_blocks - 1) * step + block - n)])
        direct = np.stack([np.square(xp[..., i * step:i * step + block]).sum(-1) / block
                           for i in range(n_blocks)], -1)
        np.testing.assert_allclose(tf._block_energy(x, block, step), direct, rtol=1e-13, atol=0)


@pytest.mark.parametrize("sr_in,sr_out", [(SR, 16_000), (48_000, 16_000), (22_050, SR), (16_000, SR)])
def test_cached_resampler_equals_tria_audio_resample(sr_in, sr_out):
    from tria.audio import resample
    x = varied_batch(0.5, sr_in)
    y = tf._resampler(sr_in, sr_out, x.device)(x)
    assert torch.equal(y, resample(x, sr_in, sr_out))
    assert tf._resampler(sr_in, sr_out, x.device) is tf._resampler(sr_in, sr_out, torch.device("cpu"))
