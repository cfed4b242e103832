"""Rhythm features: a few adaptive frequency bands of transient energy, quantised (SPEC section 2).

The pipeline computes these once per augmented rhythm prompt and stores them in the shards; the
generator computes them for the user's prompt. Everything is batched torch on the input's device;
loudness measurement uses a float64 IIR filter on the CPU (see :func:`integrated_loudness`), and
only its (B,) result goes back to the device.

On the CPU the loudness-to-mel steps run over cache-sized groups of items (``CPU_PASS_SAMPLES``);
on a GPU over the whole batch. The grouping does not change the output.

Steps (SPEC 2.1): mono -> resample -> loudness normalise -> |STFT| -> mel -> clamp -> compress ->
adaptive equal-energy band split -> transient emphasis -> smoothing -> per-band normalisation ->
quantisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from functools import lru_cache

import julius
import numpy as np
import scipy.signal
import torch
import torch.nn.functional as F
from pyloudnorm.iirfilter import IIRfilter

from tria.audio import RESAMPLE_ROLLOFF, RESAMPLE_ZEROS

EPS = 1e-8
MIN_LOUDNESS_DB = -70.0  # audiotools clamps measured loudness here (silence -> -70, not -inf)


@dataclass(frozen=True)
class RhythmFeatureConfig:
    """How rhythm features are extracted. Field names follow SPEC 2.2.

    The function defaults of the authors' ``rhythm_features`` are the dataclass defaults;
    :meth:`paper` and :meth:`release` give the two parameter sets their configs use.
    """

    sample_rate: int = 44_100
    n_bands: int = 2
    n_mels: int = 80
    window_length: int = 1024
    hop_length: int = 512
    normalize_quantile: float = 0.98
    quantization_levels: int = 33
    clamp_max: float = 50.0
    slow_ma_ms: float | None = 100.0
    post_smooth_ms: float | None = 10.0
    legacy_normalize: bool = False
    # --- options beyond the authors' code ---
    # False: fixed band edges (the paper's "2 bands, non-adaptive" ablation, absent from the
    # authors' code). Edges come from `band_edges_hz`, or split the mel bins equally if None.
    adaptive: bool = True
    band_edges_hz: tuple[float, ...] | None = None
    # "lufs": BS.1770 integrated loudness, as the authors' code. "rms": energy normalisation,
    # which the authors' README says the original TRIA used (SPEC 9.1.7).
    loudness_norm: str = "lufs"
    target_db: float = -16.0

    def __post_init__(self) -> None:
        if self.n_bands < 1:
            raise ValueError(f"n_bands must be >= 1, got {self.n_bands}")
        if self.n_bands > self.n_mels:
            raise ValueError(f"n_bands ({self.n_bands}) cannot exceed n_mels ({self.n_mels})")
        if self.quantization_levels < 2:
            raise ValueError(f"quantization_levels must be >= 2, got {self.quantization_levels}")
        if self.loudness_norm not in ("lufs", "rms"):
            raise ValueError(f"loudness_norm must be 'lufs' or 'rms', got {self.loudness_norm!r}")
        if not 0.0 < self.normalize_quantile <= 1.0:
            raise ValueError(f"normalize_quantile must be in (0, 1], got {self.normalize_quantile}")
        if self.band_edges_hz is not None and len(self.band_edges_hz) != self.n_bands - 1:
            raise ValueError(f"band_edges_hz needs n_bands - 1 = {self.n_bands - 1} edges")

    @classmethod
    def paper(cls, n_bands: int = 2, **overrides) -> "RhythmFeatureConfig":
        """The paper configs (`conf/paper_exp/*`): 44.1 kHz, 80 mels, legacy normalisation, 33 levels."""
        base = dict(sample_rate=44_100, n_bands=n_bands, n_mels=80, window_length=1024, hop_length=512,
                    slow_ma_ms=None, post_smooth_ms=None, legacy_normalize=True, quantization_levels=33)
        return cls(**{**base, **overrides})

    @classmethod
    def release(cls, n_bands: int = 2, **overrides) -> "RhythmFeatureConfig":
        """The release configs and shipped weights: 16 kHz, 40 mels, transient emphasis, 5 levels."""
        base = dict(sample_rate=16_000, n_bands=n_bands, n_mels=40, window_length=384, hop_length=192,
                    slow_ma_ms=200.0, post_smooth_ms=100.0, legacy_normalize=False,
                    normalize_quantile=0.98, quantization_levels=5)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["band_edges_hz"] is not None:
            d["band_edges_hz"] = list(d["band_edges_hz"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RhythmFeatureConfig":
        d = dict(d)
        if d.get("band_edges_hz") is not None:
            d["band_edges_hz"] = tuple(d["band_edges_hz"])
        return cls(**d)

    @property
    def config_id(self) -> str:
        """Short stable hash of every field: the `features_id` stored with shards and checkpoints."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return "feat-" + hashlib.sha1(blob).hexdigest()[:10]

    def n_frames(self, n_samples: int, sample_rate: int) -> int:
        """Feature frames for ``n_samples`` at ``sample_rate``: 1 + N'//hop at the feature rate."""
        n = n_samples if sample_rate == self.sample_rate else _resampled_length(n_samples, sample_rate,
                                                                                  self.sample_rate)
        return 1 + n // self.hop_length


def _resampled_length(n: int, sr_in: int, sr_out: int) -> int:
    g = math.gcd(sr_in, sr_out)
    return int(n * (sr_out // g) // (sr_in // g))


# ---------------------------------------------------------------------------------------------
# Loudness
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=16)
def _k_weighting(sample_rate: int) -> tuple[tuple[np.ndarray, np.ndarray, float], ...]:
    """(b, a, passband gain) of the BS.1770 pre-filter (high shelf) and RLB high-pass.

    pyloudnorm's coefficients for this rate, which are also what audiotools' Meter uses (pyloudnorm
    recomputes them on every attribute access, hence the cache).
    """
    stages = [IIRfilter(4.0, 1 / math.sqrt(2), 1500.0, sample_rate, "high_shelf"),
              IIRfilter(0.0, 0.5, 38.0, sample_rate, "high_pass")]
    return tuple((f.b, f.a, f.passband_gain) for f in stages)


# Samples per pass of the CPU loops over items (in rhythm_features: loudness, gain, peak limit, STFT
# and mel; in integrated_loudness: the float64 IIR). Passes of a few seconds of audio keep each
# step's arrays in cache and measured up to 2x faster than whole-batch passes. Items are independent,
# so the results are the same for any grouping (tests pin it). A GPU takes the whole batch at once.
CPU_PASS_SAMPLES = 2**19


def _cpu_chunks(audio: torch.Tensor) -> list[slice]:
    """Item slices of about CPU_PASS_SAMPLES samples each for the CPU (at least one item each)."""
    B = audio.shape[0]
    per_item = max(1, audio[0].numel())
    size = max(1, CPU_PASS_SAMPLES // per_item)
    return [slice(start, start + size) for start in range(0, B, size)]


def _block_energy(x: np.ndarray, block: int, step: int) -> np.ndarray:
    """Mean square of each ``block``-sample block every ``step`` samples: (..., N) -> (..., n_blocks).

    The blocks are julius ``unfold``'s: the signal is zero-padded at the end so the last block
    covers it. Each block is summed from non-overlapping chunks of gcd(block, step) samples (for
    BS.1770, 4 chunks of 100 ms per 400 ms block), so every sample is squared once and no
    overlapping copy is made. Only the order of the float64 additions differs from summing each
    block directly (relative difference ~1e-16); all terms are non-negative, so nothing cancels.
    """
    n = x.shape[-1]
    n_blocks = math.ceil((max(n, block) - block) / step) + 1
    g = math.gcd(block, step)
    n_chunks = ((n_blocks - 1) * step + block) // g
    sq = np.square(x)
    full = n // g
    chunks = np.zeros(x.shape[:-1] + (n_chunks,))
    chunks[..., :full] = sq[..., :full * g].reshape(x.shape[:-1] + (full, g)).sum(-1)
    if n > full * g:
        chunks[..., full] = sq[..., full * g:].sum(-1)
    windows = np.lib.stride_tricks.sliding_window_view(chunks, block // g, axis=-1)[..., ::step // g, :]
    return windows.sum(-1) / block


def integrated_loudness(audio: torch.Tensor, sample_rate: int, block_s: float = 0.4) -> torch.Tensor:
    """BS.1770-4 gated integrated loudness (LUFS) per batch item, as audiotools measures it.

    Matches audiotools' ``AudioSignal.loudness`` (the authors' normalisation): clips under 0.5 s are
    zero-padded to 0.5 s, 400 ms blocks with 75 % overlap where the last block is zero-padded to
    cover the end (julius ``unfold``), -70 LUFS absolute gate, -10 LU relative gate, channel gains
    1.0, and the result clamped to at least -70. The K-weighting runs as an exact float64 IIR on
    the CPU (what audiotools does on CPU); only the (B,) result goes back to ``audio.device``.

    Args:
        audio: (B, C, N) float.
    Returns:
        (B,) float32 loudness in LUFS.
    """
    audio = audio.detach().cpu()  # the documented round trip: the IIR runs on the CPU in float64
    n_min = int(0.5 * sample_rate)
    block = int(block_s * sample_rate)
    filters = _k_weighting(sample_rate)

    def block_energy(rows: torch.Tensor) -> np.ndarray:  # (b, C, N) -> (b, C, n_blocks) mean squares
        x = rows.to("cpu", torch.float64).numpy()
        if x.shape[-1] < n_min:
            x = np.pad(x, [(0, 0), (0, 0), (0, n_min - x.shape[-1])])
        for b, a, gain in filters:
            x = scipy.signal.lfilter(b, a, x, axis=-1)
            if gain != 1.0:  # 1.0 for both BS.1770 stages; x * 1.0 would only copy
                x = gain * x
        return _block_energy(x, block, int(block * 0.25))

    # Items in cache-sized groups: the float64 copies of a whole batch would not stay in cache.
    z = torch.from_numpy(np.concatenate([block_energy(audio[rows]) for rows in _cpu_chunks(audio)]))
    with np.errstate(divide="ignore"):
        lk = -0.691 + 10 * torch.log10(z.sum(1))  # (B, n_blocks), channel gains are 1 for C <= 3

        def gated_mean(keep: torch.Tensor) -> torch.Tensor:  # (B, C) mean square over kept blocks
            return (z * keep[:, None]).sum(-1) / keep.sum(-1, keepdim=True)

        above_abs = lk > -70.0
        gamma_r = -0.691 + 10 * torch.log10(gated_mean(above_abs).sum(1)) - 10.0  # (B,)
        keep = above_abs & (lk > gamma_r[:, None])
        zg = torch.nan_to_num(gated_mean(keep), nan=0.0)  # no block kept -> silence
        lufs = -0.691 + 10 * torch.log10(zg.sum(1))
    return lufs.clamp_min(MIN_LOUDNESS_DB).float().to(audio.device)


def rms_db(audio: torch.Tensor) -> torch.Tensor:
    """RMS level in dBFS per batch item, pooled over channels and time: (B, C, N) -> (B,)."""
    return 20 * torch.log10(torch.sqrt(audio.square().mean(dim=(1, 2)) + 1e-12))


def normalize_level(audio: torch.Tensor, sample_rate: int, target_db: float, mode: str = "lufs") -> torch.Tensor:
    """Apply a gain per item so its loudness ("lufs") or RMS ("rms") becomes ``target_db``."""
    level = integrated_loudness(audio, sample_rate) if mode == "lufs" else rms_db(audio)
    gain = torch.pow(10.0, (target_db - level) / 20.0).to(audio.dtype)
    return audio * gain[:, None, None]


def peak_limit(audio: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Scale down each (item, channel) whose absolute peak exceeds ``peak`` (audiotools ensure_max_of_audio)."""
    m = audio.abs().amax(dim=-1, keepdim=True)
    return audio * torch.where(m > peak, peak / m.clamp_min(EPS), torch.ones_like(m))


# ---------------------------------------------------------------------------------------------
# Mel spectrogram
# ---------------------------------------------------------------------------------------------

def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's auditory-toolbox mel scale: linear below 1 kHz, logarithmic above (librosa htk=False).
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=16)
def _mel_filterbank_tensor(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """mel_filterbank as a CPU tensor, built once per shape (callers copy it with ``.to``)."""
    return torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular mel filters with Slaney scale and area normalisation: (n_mels, 1 + n_fft//2) float32.

    Equal to ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` with its defaults (htk=False,
    norm="slaney"), which audiotools' ``mel_spectrogram`` uses.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    ramps = mel_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, n_bins)
    fdiff = np.diff(mel_hz)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def mel_spectrogram(audio: torch.Tensor, sample_rate: int, n_mels: int, window_length: int,
                    hop_length: int) -> torch.Tensor:
    """Magnitude (not power) mel spectrogram averaged over channels: (B, C, N) -> (B, n_mels, 1 + N//hop).

    As audiotools: periodic Hann window, n_fft = window length, centred frames with reflect padding.
    """
    B, C, N = audio.shape
    window = torch.hann_window(window_length, periodic=True, dtype=audio.dtype, device=audio.device)
    fb = _mel_filterbank_tensor(sample_rate, window_length, n_mels).to(audio)
    spec = torch.stft(audio.reshape(B * C, N), n_fft=window_length, hop_length=hop_length, window=window,
                      center=True, pad_mode="reflect", return_complex=True).abs()  # (B*C, n_bins, T')
    mel = torch.einsum("mf,bft->bmt", fb, spec)  # (B*C, n_mels, T')
    return mel.reshape(B, C, n_mels, -1).mean(1)  # (B, n_mels, T')


# ---------------------------------------------------------------------------------------------
# Bands, transients, normalisation
# ---------------------------------------------------------------------------------------------

def band_cuts(mel: torch.Tensor, config: RhythmFeatureConfig) -> torch.Tensor:
    """Mel-bin cut points per item: (B, n_mels, T') -> (B, n_bands + 1) long, first 0 and last n_mels.

    Adaptive (SPEC 2.1 step 6): from the clip's own long-term spectrum, edge j is the first bin where
    the cumulative energy reaches j/n_bands of the total; band j covers bins [cuts[j], cuts[j+1]).
    """
    B, M, _ = mel.shape
    n = config.n_bands
    if config.adaptive:
        cum = mel.mean(-1).cumsum(1)  # (B, M)
        targets = torch.arange(1, n, device=mel.device, dtype=mel.dtype)[None, :] / n * cum[:, -1:]  # (B, n-1)
        inner = torch.searchsorted(cum, targets.contiguous(), right=False) + 1
    else:
        if config.band_edges_hz is None:
            edges = [round(M * j / n) for j in range(1, n)]
        else:
            centres = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(config.sample_rate / 2), M + 2))[1:-1]
            edges = [int(np.searchsorted(centres, hz)) for hz in config.band_edges_hz]
        inner = torch.tensor(edges, device=mel.device, dtype=torch.long)[None, :].expand(B, n - 1)
    zeros = torch.zeros(B, 1, dtype=torch.long, device=mel.device)
    return torch.cat([zeros, inner.clamp(0, M), torch.full_like(zeros, M)], dim=1)


def split_bands(mel: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """Sum mel rows per band with prefix sums: (B, M, T'), (B, n+1) -> (B, n, T')."""
    B, _, T = mel.shape
    prefix = F.pad(mel.cumsum(1), (0, 0, 1, 0))  # (B, M + 1, T'), prefix[:, m] = sum of rows < m
    n = cuts.shape[1] - 1
    lo = cuts[:, :-1, None].expand(B, n, T)
    hi = cuts[:, 1:, None].expand(B, n, T)
    return prefix.gather(1, hi) - prefix.gather(1, lo)


def moving_average(x: torch.Tensor, window: int) -> torch.Tensor:
    """Box filter over time per channel with reflect padding ((w-1)//2 left, w//2 right): same length."""
    if window <= 1:
        return x
    pad = (window - 1) // 2, window // 2
    if x.shape[-1] <= max(pad):  # reflect needs more frames than the pad; fall back to replicate
        xp = F.pad(x, pad, mode="replicate")
    else:
        xp = F.pad(x, pad, mode="reflect")
    kernel = torch.full((x.shape[1], 1, window), 1.0 / window, dtype=x.dtype, device=x.device)
    return F.conv1d(xp, kernel, groups=x.shape[1])


@lru_cache(maxsize=16)
def _resampler(sr_in: int, sr_out: int, device: torch.device) -> julius.ResampleFrac:
    """tria.audio.resample's julius resampler, its sinc kernel built once on the CPU and kept per device.

    julius.resample_frac would build the kernel (a Python loop of torch ops) on every call, on the
    default device. Built on the CPU and copied, every device gets the same kernel; the output
    equals ``tria.audio.resample`` bit for bit (tests pin it).
    """
    with torch.device("cpu"):
        module = julius.ResampleFrac(int(sr_in), int(sr_out), zeros=RESAMPLE_ZEROS, rolloff=RESAMPLE_ROLLOFF)
    return module.to(device)


def _frames(ms: float, config: RhythmFeatureConfig) -> int:
    return max(1, int(round(ms / 1000.0 * config.sample_rate / config.hop_length)))


def rhythm_features(audio: torch.Tensor, sample_rate: int, config: RhythmFeatureConfig | None = None) -> torch.Tensor:
    """Rhythm features of a batch of clips.

    Args:
        audio: (B, C, N) float at ``sample_rate``; all items share N (zero-pad shorter clips).
        sample_rate: rate of ``audio``; it is resampled to ``config.sample_rate``.
        config: extractor settings; the authors' function defaults if None.

    Returns:
        (B, n_bands, F) float32 in [0, 1] on a grid of ``quantization_levels`` points, where
        F = 1 + N'//hop_length and N' is the length at the feature rate.

    Raises:
        ValueError: wrong rank, empty or too-short audio, NaN/Inf samples, bad sample rate.
    """
    config = config or RhythmFeatureConfig()
    _check_input(audio, sample_rate, config)
    x = audio.float().mean(1, keepdim=True)  # (B, 1, N) mono
    if sample_rate != config.sample_rate:
        with torch.device("cpu"):  # julius' forward makes its length scalars on the default device
            x = _resampler(sample_rate, config.sample_rate, x.device)(x)

    def level_and_mel(rows: torch.Tensor) -> torch.Tensor:  # (b, 1, N') -> (b, n_mels, F)
        rows = peak_limit(normalize_level(rows, config.sample_rate, config.target_db, config.loudness_norm))
        return mel_spectrogram(rows, config.sample_rate, config.n_mels, config.window_length, config.hop_length)

    if x.device.type == "cpu":  # groups of items that stay in cache (see CPU_PASS_SAMPLES)
        mel = torch.cat([level_and_mel(x[rows]) for rows in _cpu_chunks(x)])
    else:
        mel = level_and_mel(x)
    mel = mel.clamp(0.0, config.clamp_max)  # (B, n_mels, F)
    if config.legacy_normalize:
        mel = mel / config.n_mels
    else:
        mel = torch.log1p(mel) / math.log1p(config.clamp_max)

    if config.n_bands == 1:
        bands = mel.sum(1, keepdim=True)  # (B, 1, F)
    else:
        bands = split_bands(mel, band_cuts(mel, config))  # (B, n_bands, F)

    if config.slow_ma_ms is not None:
        bands = torch.relu(bands - moving_average(bands, _frames(config.slow_ma_ms, config)))
    if config.post_smooth_ms is not None:
        bands = moving_average(bands, _frames(config.post_smooth_ms, config))

    if config.legacy_normalize:
        # Mean/std over time then sigmoid: the mean maps to 0.5, so silence sits below 0.5.
        mean = bands.mean(-1, keepdim=True)
        std = bands.std(-1, keepdim=True).clamp_min(EPS)
        bands = torch.sigmoid((bands - mean) / std)
    else:
        q = torch.quantile(bands.clamp_min(0.0), config.normalize_quantile, dim=-1, keepdim=True).clamp_min(EPS)
        bands = (bands / q).clamp(0.0, 1.0)

    steps = config.quantization_levels - 1
    return torch.round(bands * steps) / steps


def _check_input(audio: torch.Tensor, sample_rate: int, config: RhythmFeatureConfig) -> None:
    if not isinstance(audio, torch.Tensor):
        raise ValueError(f"audio must be a torch.Tensor of shape (B, C, N), got {type(audio).__name__}")
    if audio.dim() != 3:
        raise ValueError(f"audio must have shape (B, C, N), got {tuple(audio.shape)}")
    if audio.numel() == 0:
        raise ValueError(f"audio is empty: shape {tuple(audio.shape)}")
    if not torch.isfinite(torch.stack(torch.aminmax(audio))).all():  # NaN propagates to min and max
        raise ValueError("audio contains NaN or Inf samples")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    n = _resampled_length(audio.shape[-1], sample_rate, config.sample_rate)
    if n <= config.window_length // 2:
        raise ValueError(
            f"audio too short for rhythm features: {audio.shape[-1]} samples at {sample_rate} Hz "
            f"(needs more than {config.window_length // 2} samples at {config.sample_rate} Hz)")


def align_features(feats: torch.Tensor, n_frames: int, mode: str = "nearest") -> torch.Tensor:
    """Stretch features to ``n_frames`` codec frames: (B, n_bands, F) -> (B, n_bands, n_frames).

    As the authors (SPEC 2.3): ``F.interpolate(mode="nearest")`` takes source frame floor(i * F / n),
    with no sub-frame offset correction (517 or 501 feature frames onto 516 token frames).
    """
    if feats.dim() != 3:
        raise ValueError(f"feats must have shape (B, n_bands, F), got {tuple(feats.shape)}")
    if feats.shape[-1] == n_frames:
        return feats
    return F.interpolate(feats, size=n_frames, mode=mode)
