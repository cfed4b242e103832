"""Objective metrics for TRIA outputs: rhythm adherence, timbre adherence, and set-level quality.

Rhythm adherence (does the output play the prompt's rhythm?):

* :func:`detect_onsets`: a spectral-flux onset detector with peak picking (numpy/scipy, no librosa).
* :func:`onset_f1`: onset precision / recall / F1 within a +-50 ms window, one-to-one matching
  (mir_eval's ``onset.f_measure`` conventions).
* :func:`feature_correlation`: Pearson correlation per band of the rhythm features
  (:func:`tria.features.rhythm_features`) of prompt and output, with the model's feature config.

Timbre adherence and quality (does the output sound like the timbre prompt / like real drums?):

* an embedding model, pluggable: :class:`SpectralEmbedder` (no weights, the offline default), a
  local-weights VGGish, LAION-CLAP, or any callable (:func:`get_embedder`, :func:`register_embedder`);
* :func:`cosine_similarity` between the timbre prompt's and the output's mean embeddings;
* :func:`frechet_distance` between Gaussians fitted to the embeddings of two sets (FAD-style).

Plus :func:`bootstrap_ci` for the confidence intervals of the aggregates.
docs/evaluation.md defines every number precisely.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.signal
import torch

from tria.features import RhythmFeatureConfig, mel_filterbank, rhythm_features

__all__ = [
    "OnsetConfig",
    "OnsetScores",
    "detect_onsets",
    "onset_strength",
    "pick_peaks",
    "match_events",
    "onset_f1",
    "feature_correlation",
    "rhythm_correlation",
    "mel_distance",
    "Embedder",
    "EmbedderUnavailable",
    "SpectralEmbedder",
    "CallableEmbedder",
    "register_embedder",
    "get_embedder",
    "list_embedders",
    "embed_clips",
    "cosine_similarity",
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "bootstrap_ci",
]


def _mono_at(audio: np.ndarray | torch.Tensor, sample_rate: int, target_rate: int, what: str) -> np.ndarray:
    """(N,) or (C, N) float audio -> (N,) float64 mono at ``target_rate`` (polyphase resampling)."""
    x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if x.ndim == 2:
        x = x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"{what}: audio must have shape (N,) or (C, N), got {x.shape}")
    if x.size == 0:
        raise ValueError(f"{what}: audio is empty")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: audio contains NaN or Inf samples")
    if sample_rate <= 0:
        raise ValueError(f"{what}: sample_rate must be positive, got {sample_rate}")
    x = x.astype(np.float64)
    if sample_rate != target_rate:
        g = math.gcd(int(sample_rate), int(target_rate))
        x = scipy.signal.resample_poly(x, target_rate // g, sample_rate // g)
    return x


def _frames(x: np.ndarray, n_fft: int, hop: int, center: bool) -> np.ndarray:
    """Hann-windowed frames (n_frames, n_fft); centred frames are zero-padded n_fft//2 on both sides."""
    if center:
        x = np.pad(x, (n_fft // 2, n_fft // 2))
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    n = 1 + (len(x) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:n]  # (n, n_fft) view
    return frames * scipy.signal.get_window("hann", n_fft)[None, :]


# ----------------------------------------------------------------------------------------------
# Onsets


@dataclass(frozen=True)
class OnsetConfig:
    """Settings of the spectral-flux onset detector (times in seconds, analysis at 100 frames/s).

    Attributes:
        sample_rate: analysis rate; the input is resampled to it.
        window_length: STFT window (1024 at 44.1 kHz = 23 ms). A 2048 window moves detections
            about one frame early, because a transient enters the window long before its centre.
        hop_length: 441 at 44.1 kHz = 10 ms frames.
        n_mels: bands of the (peak-normalised) mel filterbank that the flux is summed over.
        compression: lambda of the log compression log(1 + lambda * M).
        max_filter_bands: width of the maximum filter over bands applied to the previous frame
            (SuperFlux, Boeck & Widmer 2013): suppresses flux from pitch glides such as a kick's sweep.
        pre_max_s, post_max_s: a peak must be the maximum of [t - pre_max, t + post_max].
        pre_avg_s, post_avg_s: ... and exceed the mean of [t - pre_avg, t + post_avg] by ``delta``.
        delta: threshold on the envelope normalised to [0, 1].
        wait_s: minimum gap after an onset before the next one (the first one is kept).
        silence_peak: clips whose absolute peak is below this have no onsets (-80 dBFS).
    """

    sample_rate: int = 44_100
    window_length: int = 1024
    hop_length: int = 441
    n_mels: int = 80
    compression: float = 1.0
    max_filter_bands: int = 3
    pre_max_s: float = 0.03
    post_max_s: float = 0.03
    pre_avg_s: float = 0.10
    post_avg_s: float = 0.10
    delta: float = 0.07
    wait_s: float = 0.03
    silence_peak: float = 1e-4

    @property
    def fps(self) -> float:
        return self.sample_rate / self.hop_length

    def frames(self, seconds: float) -> int:
        return int(round(seconds * self.fps))


def onset_strength(audio: np.ndarray | torch.Tensor, sample_rate: int,
                   config: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """Spectral-flux onset envelope: (N,) or (C, N) audio -> (F,) with F = 1 + N' // hop.

    Steps: mono, resample, peak-normalise (the detector is level-invariant), centred Hann STFT
    magnitude, mel bands (each filter scaled to peak 1), ``log(1 + lambda M)``, then
    flux[t] = sum_b max(0, L[t, b] - maxfilter_b(L[t-1])[b]); flux[0] = 0.
    Frame t is centred at t * hop / sample_rate seconds.
    """
    c = config
    x = _mono_at(audio, sample_rate, c.sample_rate, "onset_strength")
    peak = np.abs(x).max()
    x = x / peak if peak > 0 else x
    spec = np.abs(np.fft.rfft(_frames(x, c.window_length, c.hop_length, center=True), axis=1))  # (F, bins)
    fb = mel_filterbank(c.sample_rate, c.window_length, c.n_mels).astype(np.float64)
    fb /= np.maximum(fb.max(axis=1, keepdims=True), 1e-12)  # peak 1 per filter: bands sum magnitudes
    log_mel = np.log1p(c.compression * spec @ fb.T)  # (F, n_mels)
    prev = log_mel[:-1]
    if c.max_filter_bands > 1:
        prev = scipy.ndimage.maximum_filter1d(prev, c.max_filter_bands, axis=1)
    flux = np.maximum(0.0, log_mel[1:] - prev).sum(axis=1)  # (F - 1,)
    return np.concatenate([[0.0], flux])


def pick_peaks(envelope: np.ndarray, config: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """Frames of the onsets in an onset envelope (F,) -> (n,) int, increasing.

    The envelope is min-max normalised; frame t is an onset when (1) it is the maximum of its
    [t - pre_max, t + post_max] neighbourhood, (2) it exceeds the mean of [t - pre_avg, t + post_avg]
    by ``delta``, and (3) it comes more than ``wait`` frames after the previous onset. These are the
    rules of Boeck, Krebs & Schedl (2012) that librosa's ``peak_pick`` follows, with a symmetric
    maximum window because evaluation is offline.
    """
    c = config
    env = np.asarray(envelope, dtype=np.float64)
    if env.size == 0 or env.max() - env.min() <= 1e-12:
        return np.zeros(0, dtype=np.int64)
    env = (env - env.min()) / (env.max() - env.min())
    n = len(env)
    pre_max, post_max = c.frames(c.pre_max_s), c.frames(c.post_max_s)
    # maximum over [t - pre_max, t + post_max]: shift a centred window by (pre_max - post_max) // 2
    local_max = scipy.ndimage.maximum_filter1d(
        env, pre_max + post_max + 1, origin=(pre_max - post_max) // 2, mode="constant", cval=0.0
    )
    cum = np.concatenate([[0.0], np.cumsum(env)])
    t = np.arange(n)
    lo = np.clip(t - c.frames(c.pre_avg_s), 0, n)
    hi = np.clip(t + c.frames(c.post_avg_s) + 1, 0, n)
    local_mean = (cum[hi] - cum[lo]) / (hi - lo)
    candidates = np.flatnonzero((env >= local_max) & (env >= local_mean + c.delta))
    onsets, last, wait = [], -(10**9), c.frames(c.wait_s)
    for i in candidates:
        if i - last > wait:
            onsets.append(i)
            last = i
    return np.asarray(onsets, dtype=np.int64)


def detect_onsets(audio: np.ndarray | torch.Tensor, sample_rate: int,
                  config: OnsetConfig = OnsetConfig()) -> np.ndarray:
    """Onset times in seconds of a clip: (N,) or (C, N) audio -> (n,) float64, increasing.

    A clip whose peak is below ``config.silence_peak`` has no onsets (otherwise the envelope
    normalisation would turn noise in silence into onsets).
    """
    x = _mono_at(audio, sample_rate, sample_rate, "detect_onsets")
    if np.abs(x).max() < config.silence_peak:
        return np.zeros(0)
    frames = pick_peaks(onset_strength(x, sample_rate, config), config)
    return frames / config.fps


@dataclass(frozen=True)
class OnsetScores:
    """Onset precision, recall and F1, with the counts they come from."""

    precision: float
    recall: float
    f1: float
    n_reference: int
    n_estimated: int
    n_matched: int


def _check_events(events: np.ndarray | Sequence[float], what: str) -> np.ndarray:
    x = np.asarray(events, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or Inf")
    if np.any(np.diff(x) < 0):
        raise ValueError(f"{what} must be sorted in increasing order")
    return x


def match_events(reference: np.ndarray | Sequence[float], estimated: np.ndarray | Sequence[float],
                 window: float = 0.05) -> list[tuple[int, int]]:
    """A maximum one-to-one matching of events with |reference - estimated| <= window.

    Greedy two-pointer sweep over the two sorted lists: each reference event, in time order, takes
    the earliest unmatched estimate inside its window. Because every window is an interval and the
    windows are ordered like their events, this greedy choice is a maximum matching (the standard
    exchange argument for interval bipartite graphs), so it has the same size as mir_eval's
    Hopcroft-Karp ``match_events``; only which pairs are matched can differ, and F1 depends only on
    the count. Runs in O(n + m).

    Args:
        reference, estimated: event times in seconds, sorted increasing.
        window: tolerance in seconds (inclusive).

    Returns:
        Pairs (i, j) of matched reference and estimate indices, increasing in both.
    """
    ref = _check_events(reference, "reference events")
    est = _check_events(estimated, "estimated events")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    pairs, j = [], 0
    for i, r in enumerate(ref):
        while j < len(est) and est[j] < r - window:  # too early for r, hence for every later reference
            j += 1
        if j < len(est) and est[j] <= r + window:
            pairs.append((i, j))
            j += 1
    return pairs


def onset_f1(reference: np.ndarray | Sequence[float], estimated: np.ndarray | Sequence[float],
             window: float = 0.05) -> OnsetScores:
    """Onset precision / recall / F1 with mir_eval's conventions (``mir_eval.onset.f_measure``).

    precision = matched / n_estimated, recall = matched / n_reference, F1 = 2PR / (P + R). As in
    mir_eval, all three are 0 when either list is empty (including both).

    Args:
        reference: onsets of the rhythm prompt (s), sorted.
        estimated: onsets of the output (s), sorted.
        window: +- tolerance in seconds (mir_eval default 0.05).
    """
    ref = _check_events(reference, "reference onsets")
    est = _check_events(estimated, "estimated onsets")
    if ref.size == 0 or est.size == 0:
        return OnsetScores(0.0, 0.0, 0.0, int(ref.size), int(est.size), 0)
    n = len(match_events(ref, est, window))
    p, r = n / est.size, n / ref.size
    f = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    return OnsetScores(p, r, f, int(ref.size), int(est.size), n)


# ----------------------------------------------------------------------------------------------
# Codec reconstruction: multi-scale mel distance

MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
MEL_BANDS = (5, 10, 20, 40, 80, 160, 320)


def mel_distance(reference: np.ndarray | torch.Tensor, estimate: np.ndarray | torch.Tensor, sample_rate: int,
                 windows: Sequence[int] = MEL_WINDOWS, n_mels: Sequence[int] = MEL_BANDS,
                 clamp_eps: float = 1e-5) -> float:
    """Multi-scale mel distance between two clips (lower is closer; 0 for identical clips).

    The reconstruction metric of DAC's 44 kHz training config (``MelSpectrogramLoss`` with
    ``mag_weight=0``): for each (window, bands) pair, a Hann STFT with hop window/4, Slaney mel
    filters (:func:`tria.features.mel_filterbank`, equal to librosa's), and the mean absolute
    difference of ``log10(max(mel, clamp_eps))``; summed over the 7 scales. The clips are
    mono-mixed and cut to the shorter one; no level normalisation happens here.
    """
    x = torch.as_tensor(_mono_at(reference, sample_rate, sample_rate, "mel_distance"), dtype=torch.float32)
    y = torch.as_tensor(_mono_at(estimate, sample_rate, sample_rate, "mel_distance"), dtype=torch.float32)
    n = min(x.numel(), y.numel())
    if n < max(windows):
        raise ValueError(f"mel_distance needs at least {max(windows)} samples, got {n}")
    x, y = x[:n], y[:n]
    total = 0.0
    for win, bands in zip(windows, n_mels, strict=True):
        fb = torch.from_numpy(mel_filterbank(sample_rate, win, bands))
        mels = []
        for z in (x, y):
            spec = torch.stft(z, n_fft=win, hop_length=win // 4, window=torch.hann_window(win), center=True,
                              pad_mode="reflect", return_complex=True).abs()  # (bins, frames)
            mels.append(torch.log10((fb @ spec).clamp_min(clamp_eps)))
        total += float((mels[0] - mels[1]).abs().mean())
    return total


# ----------------------------------------------------------------------------------------------
# Rhythm-feature correlation


def feature_correlation(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pearson correlation over frames, per band: (F, T1), (F, T2) -> (F,).

    Tracks of different lengths are cut to the shorter one (one frame of difference is normal
    when prompt and output lengths round differently). A band that is constant in either track has
    no defined correlation: NaN.
    """
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"need two (F, T) feature tracks with the same F, got {a.shape} and {b.shape}")
    T = min(a.shape[1], b.shape[1])
    if T < 2:
        raise ValueError(f"need at least 2 frames to correlate, got {T}")
    a = a[:, :T].astype(np.float64)
    b = b[:, :T].astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / den
    r[den <= 1e-12] = np.nan
    return np.clip(r, -1.0, 1.0)


def rhythm_correlation(prompt: np.ndarray | torch.Tensor, output: np.ndarray | torch.Tensor, sample_rate: int,
                       config: RhythmFeatureConfig) -> np.ndarray:
    """Per-band Pearson correlation of the rhythm features of two clips: -> (n_bands,).

    Both clips go through :func:`tria.features.rhythm_features` with ``config`` (the model's, so
    the bands are the ones the model was conditioned on); each clip gets its own adaptive bands.

    Args:
        prompt, output: (N,) or (C, N) audio at ``sample_rate``.
    """
    feats = []
    for clip in (prompt, output):
        x = torch.as_tensor(_mono_at(clip, sample_rate, sample_rate, "rhythm_correlation"),
                            dtype=torch.float32)
        feats.append(rhythm_features(x[None, None], sample_rate, config)[0])  # (F, T)
    return feature_correlation(feats[0], feats[1])


# ----------------------------------------------------------------------------------------------
# Embeddings


class EmbedderUnavailable(ValueError):
    """An embedding model cannot be built here (package or local weights missing)."""


@runtime_checkable
class Embedder(Protocol):
    """An audio embedding model: one clip in, one row per analysis window out.

    Attributes:
        name: short name, recorded with the results.
        sample_rate: rate the clips are given at (the caller resamples).
        standardize: whether cosine / Frechet should run on embeddings standardised with the
            reference set's mean and std (right for hand-made features of mixed units; learned
            embeddings such as CLAP are compared raw).
    """

    name: str
    sample_rate: int
    standardize: bool

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """(N,) float mono at ``sample_rate`` -> (n_windows, D) float, n_windows >= 1."""


@dataclass(frozen=True)
class SpectralEmbedder:
    """Spectral statistics per window: a weight-free timbre embedding (the offline default).

    Each clip is RMS-normalised to -20 dBFS (so level does not count as timbre) and cut into
    non-overlapping windows of ``window_s`` (a shorter clip is one window). For each window, from a
    Hann STFT (2048 / 512 at 44.1 kHz) it returns, as mean and std over frames (D = 146 by default):

    * log-mel energies: 10 log10(mel power + 1e-10), 64 Slaney mel bands (128 values);
    * spectral centroid / Nyquist (2);
    * spectral flatness, geometric / arithmetic mean of the power spectrum (2);
    * spectral contrast in 7 octave sub-bands (0-200, 200-400, ..., 6.4-12.8 kHz, 12.8 kHz-Nyquist):
      log10 of the mean of the top 2% magnitudes minus log10 of the mean of the bottom 2% (14).
    """

    name: str = "spectral"
    sample_rate: int = 44_100
    standardize: bool = True
    window_s: float = 1.0
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 64
    contrast_fmin: float = 200.0
    contrast_bands: int = 6
    contrast_quantile: float = 0.02

    @property
    def dim(self) -> int:
        return 2 * (self.n_mels + 2 + self.contrast_bands + 1)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        x = _mono_at(audio, self.sample_rate, self.sample_rate, "SpectralEmbedder")
        rms = np.sqrt(np.mean(x**2))
        if rms > 1e-8:
            x = x * (10 ** (-20 / 20) / rms)
        win = max(int(self.window_s * self.sample_rate), self.n_fft)
        starts = range(0, max(len(x) - win, 0) + 1, win)
        return np.stack([self._window(x[s : s + win]) for s in starts])  # (n_windows, D)

    def _window(self, x: np.ndarray) -> np.ndarray:
        mag = np.abs(np.fft.rfft(_frames(x, self.n_fft, self.hop_length, center=True), axis=1))  # (T, bins)
        power = mag**2
        freqs = np.fft.rfftfreq(self.n_fft, 1.0 / self.sample_rate)
        fb = mel_filterbank(self.sample_rate, self.n_fft, self.n_mels).astype(np.float64)
        log_mel = 10 * np.log10(power @ fb.T + 1e-10)  # (T, n_mels)
        total = power.sum(axis=1) + 1e-10
        centroid = (power @ freqs) / total / (self.sample_rate / 2)  # (T,)
        flatness = np.exp(np.mean(np.log(power + 1e-10), axis=1)) / (np.mean(power, axis=1) + 1e-10)
        per_frame = [log_mel, centroid[:, None], flatness[:, None], self._contrast(mag, freqs)]
        feats = np.concatenate(per_frame, axis=1)  # (T, D / 2)
        return np.concatenate([feats.mean(axis=0), feats.std(axis=0)])

    def _contrast(self, mag: np.ndarray, freqs: np.ndarray) -> np.ndarray:
        edges = [0.0] + [self.contrast_fmin * 2**k for k in range(self.contrast_bands)] + [np.inf]
        out = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            band = np.sort(mag[:, (freqs >= lo) & (freqs < hi)], axis=1)  # (T, n_bins) ascending
            if band.shape[1] == 0:  # a band above Nyquist at a low sample rate
                out.append(np.zeros(len(mag)))
                continue
            k = max(1, int(round(self.contrast_quantile * band.shape[1])))
            peak, valley = band[:, -k:].mean(axis=1), band[:, :k].mean(axis=1)
            # floor 1e-5 (power 1e-10, as above): ~-140 dB under a -20 dBFS clip's peaks, so float
            # rounding noise in silent frames does not count as contrast
            out.append(np.log10(peak + 1e-5) - np.log10(valley + 1e-5))
        return np.stack(out, axis=1)  # (T, contrast_bands + 1)


@dataclass(frozen=True)
class CallableEmbedder:
    """Wraps a plain function ``fn(audio (N,) at sample_rate) -> (D,) or (n, D)`` as an :class:`Embedder`."""

    fn: Callable[[np.ndarray], Any]
    sample_rate: int
    name: str = "callable"
    standardize: bool = False

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        out = self.fn(audio)
        out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        return np.atleast_2d(out.astype(np.float64))


_REGISTRY: dict[str, Callable[..., Embedder]] = {}


def register_embedder(name: str) -> Callable[[Callable[..., Embedder]], Callable[..., Embedder]]:
    """Decorator: make ``factory(**options) -> Embedder`` available as ``get_embedder(name, **options)``."""

    def wrap(factory: Callable[..., Embedder]) -> Callable[..., Embedder]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_embedders() -> list[str]:
    return sorted(_REGISTRY)


def get_embedder(spec: str | Embedder | Callable[[np.ndarray], Any], sample_rate: int | None = None,
                 **options: Any) -> Embedder:
    """An embedder from a registered name, an :class:`Embedder`, or a plain callable.

    Args:
        spec: "spectral" (default, no weights), "vggish" or "clap" (local weights, see their
            factories), a name added with :func:`register_embedder`, an Embedder, or a function
            ``(N,) audio -> (D,) or (n, D)`` (then ``sample_rate`` is required).
        options: keyword arguments of the named factory (e.g. ``checkpoint=...``).

    Raises:
        ValueError: unknown name, or a callable without ``sample_rate``.
        EmbedderUnavailable: the model's package or weights are not available locally.
    """
    if isinstance(spec, str):
        if spec not in _REGISTRY:
            raise ValueError(f"unknown embedder {spec!r}; registered: {', '.join(list_embedders())}")
        return _REGISTRY[spec](**options)
    if isinstance(spec, Embedder):
        return spec
    if callable(spec):
        if sample_rate is None:
            raise ValueError("a callable embedder needs sample_rate (the rate it expects its input at)")
        return CallableEmbedder(spec, int(sample_rate), **options)
    raise ValueError(f"embedder must be a name, an Embedder or a callable, got {type(spec).__name__}")


@register_embedder("spectral")
def _spectral(**options: Any) -> Embedder:
    return SpectralEmbedder(**options)


def _local_file(checkpoint: str | Path | None, what: str) -> Path:
    if not checkpoint:
        raise EmbedderUnavailable(f"{what} needs checkpoint=<local weights file>; nothing is downloaded")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise EmbedderUnavailable(f"{what} weights not found at {path}; nothing is downloaded")
    return path


@register_embedder("clap")
def _clap(checkpoint: str | None = None, amodel: str = "HTSAT-tiny", enable_fusion: bool = False,
          device: str = "cpu") -> Embedder:
    """LAION-CLAP audio embeddings (512-d, 48 kHz) from a local checkpoint (needs the laion-clap package)."""
    path = _local_file(checkpoint, "the clap embedder")
    try:
        import laion_clap  # noqa: PLC0415 - optional dependency
    except ImportError as e:
        raise EmbedderUnavailable("the clap embedder needs the laion-clap package: pip install laion-clap") \
            from e
    model = laion_clap.CLAP_Module(enable_fusion=enable_fusion, amodel=amodel, device=device)
    model.load_ckpt(ckpt=str(path), verbose=False)

    def embed(audio: np.ndarray) -> np.ndarray:
        return model.get_audio_embedding_from_data(x=audio[None].astype(np.float32), use_tensor=False)

    return CallableEmbedder(embed, 48_000, name="clap", standardize=False)


# VGGish (Hershey et al. 2017) as ported to PyTorch by torchvggish: same layer names, so its
# converted weights file (vggish-10086976.pth) loads as-is. The front end follows the reference
# vggish_input: 16 kHz, 25 ms periodic-Hann frames, 10 ms hop, FFT 512, 64 HTK-mel bands over
# 125-7500 Hz, log(mel + 0.01), non-overlapping 0.96 s examples of 96 frames.
VGGISH_RATE = 16_000


def vggish_network() -> torch.nn.Module:
    """The VGGish graph (random init): (n, 1, 96, 64) log-mel examples -> (n, 128) embeddings."""
    import torch.nn as nn

    layers: list[nn.Module] = []
    channels = 1
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            channels = int(v)

    class VGGish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.embeddings = nn.Sequential(
                nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096), nn.ReLU(True),
                nn.Linear(4096, 128), nn.ReLU(True))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.features(x)  # (n, 512, 6, 4)
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # channels last, as the TF graph flattens
            return self.embeddings(x)

    return VGGish()


def vggish_examples(audio: np.ndarray) -> np.ndarray:
    """VGGish input: (N,) float at 16 kHz -> (n, 96, 64) log-mel examples (n >= 1; short clips padded)."""
    win, hop, n_fft = 400, 160, 512
    x = np.asarray(audio, dtype=np.float64)
    need = win + hop * 95  # samples for one 96-frame example
    if len(x) < need:
        x = np.pad(x, (0, need - len(x)))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop] * window  # (T, 400)
    mag = np.abs(np.fft.rfft(frames, n_fft, axis=1))  # (T, 257)
    mel = mag @ _htk_mel_matrix(n_fft // 2 + 1, VGGISH_RATE, 64, 125.0, 7500.0)
    log_mel = np.log(mel + 0.01)  # (T, 64)
    n = len(log_mel) // 96
    return log_mel[: n * 96].reshape(n, 96, 64)


def _htk_mel_matrix(n_bins: int, sample_rate: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_bins, n_mels) triangular HTK-mel weights, peak 1, DC bin zeroed (as vggish's mel_features)."""
    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(f) / 700.0)

    bins_mel = hz_to_mel(np.linspace(0.0, sample_rate / 2, n_bins))
    edges = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (bins_mel[:, None] - lower[None]) / (centre - lower)[None]
    down = (upper[None] - bins_mel[:, None]) / (upper - centre)[None]
    weights = np.maximum(0.0, np.minimum(up, down))
    weights[0, :] = 0.0
    return weights


@register_embedder("vggish")
def _vggish(checkpoint: str | None = None, device: str = "cpu") -> Embedder:
    """VGGish (128-d per 0.96 s, 16 kHz) from a local torchvggish weights file; no extra package needed."""
    path = _local_file(checkpoint, "the vggish embedder")
    net = vggish_network()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:  # a wrong file surfaces as many error types; say what was expected
        raise EmbedderUnavailable(f"{path} is not a VGGish state dict (torchvggish layout): "
                                  f"{str(e)[:300]}") from e
    net = net.to(device).eval()

    @torch.no_grad()
    def embed(audio: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(vggish_examples(audio)).float()[:, None].to(device)  # (n, 1, 96, 64)
        return net(x).cpu().numpy()

    return CallableEmbedder(embed, VGGISH_RATE, name="vggish", standardize=False)


def embed_clips(embedder: Embedder, clips: Sequence[np.ndarray | torch.Tensor],
                sample_rate: int) -> list[np.ndarray]:
    """Embed clips given at ``sample_rate``: -> one (n_windows_i, D) float64 array per clip."""
    out = []
    for i, clip in enumerate(clips):
        x = _mono_at(clip, sample_rate, embedder.sample_rate, f"clip {i}")
        e = np.atleast_2d(np.asarray(embedder(x), dtype=np.float64))
        if e.ndim != 2 or e.shape[0] < 1 or not np.isfinite(e).all():
            raise ValueError(f"embedder {embedder.name!r} returned shape {e.shape} or non-finite values "
                             f"for clip {i}")
        out.append(e)
    return out


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two embeddings (D,) (or (n, D): their means over rows). NaN if either is zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a.mean(axis=0) if a.ndim == 2 else a
    b = b.mean(axis=0) if b.ndim == 2 else b
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"embeddings must have the same dimension, got {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na <= 1e-12 or nb <= 1e-12:
        return float("nan")
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of embeddings (n, D), n >= 2."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"a Gaussian fit needs embeddings of shape (n >= 2, D), got {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                                eps: float = 1e-6) -> float:
    """Frechet distance of two Gaussians: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)).

    Safeguards (as in the FID/FAD reference code): when ``scipy.linalg.sqrtm`` gives non-finite
    values or an imaginary part above 1e-3 (near-singular covariances, e.g. fewer samples than
    dimensions), it is retried with ``eps`` added to both diagonals; a remaining small imaginary
    part is numerical noise and dropped; tiny negative results are rounding and clipped to 0.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        shapes = [mu1.shape, sigma1.shape, mu2.shape, sigma2.shape]
        raise ValueError(f"mismatched Gaussian stats (mu1, sigma1, mu2, sigma2): {shapes}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if covmean is None:
        offset = np.eye(len(mu1)) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if covmean is None:
            raise ValueError("Frechet distance: the matrix square root failed even with a diagonal offset")
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    return float(max(fd, 0.0))


def _sqrtm(m: np.ndarray) -> np.ndarray | None:
    with warnings.catch_warnings():  # scipy warns on singular input; the checks below decide
        warnings.simplefilter("ignore")
        root = scipy.linalg.sqrtm(m)
    if not np.isfinite(root).all():
        return None
    if np.iscomplexobj(root):
        if np.abs(root.imag).max() > 1e-3:
            return None
        root = root.real
    return root


def frechet_distance(x: np.ndarray, y: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two embedding sets (n, D) and (m, D)."""
    return frechet_distance_from_stats(*gaussian_stats(x), *gaussian_stats(y), eps=eps)


# ----------------------------------------------------------------------------------------------
# Confidence intervals


def bootstrap_ci(values: np.ndarray | Sequence[float], clusters: np.ndarray | Sequence[Any] | None = None,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean and percentile-bootstrap confidence interval, resampling whole clusters.

    NaN values are left out. With ``clusters`` (e.g. the prompt pair of each row, when each pair
    has several seeds), clusters are resampled with replacement and the statistic is the mean over
    all rows of the drawn clusters, because rows of one pair are not independent.

    Returns:
        (mean, low, high, n): n counts the non-NaN values; all NaN when n = 0; low = high = mean
        when there is one cluster.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    groups = np.arange(v.size) if clusters is None else np.asarray(clusters).reshape(-1)
    if groups.size != v.size:
        raise ValueError(f"clusters has {groups.size} entries for {v.size} values")
    keep = np.isfinite(v)
    v, groups = v[keep], groups[keep]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    _, inverse = np.unique(groups, return_inverse=True)
    sums = np.bincount(inverse, weights=v)
    counts = np.bincount(inverse).astype(np.float64)
    k = len(sums)
    if k < 2 or n_boot < 1:
        return mean, mean, mean, int(v.size)
    draws = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))  # (n_boot, k) cluster indices
    stats = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return mean, float(low), float(high), int(v.size)
