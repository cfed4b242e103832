"""Rhythm-prompt augmentation chain (SPEC.md section 5.3), batched and seeded per excerpt.

The chain, in the authors' order (``train_rhythm/build_transform.names``)::

    BandPass -> ShiftPhase -> PitchShift -> Equalizer -> FilteredNoise [-> Reverb -> BackgroundNoise]

Each stage touches an item with its own probability. The items it touched are then rescaled to
their input energy (``match_energy``, the authors' ``NormalizedBaseTransform``) and peak-limited to
|x| <= 1. The two extras from the authors' README (a room impulse response at DRR U(0, 30) dB and
recorded background noise at SNR U(10, 30) dB) run only when the config turns them on and the
caller passes the arrays.

Randomness. Item ``b`` draws its parameters from its seed alone (``sample_params``), so its result
does not depend on the rest of the batch. By default (``authors_seeding=True``) that is one fresh
``np.random.RandomState(seeds[b])`` consumed by the transforms in turn with the authors' calls in
the authors' order. That is what audiotools does: ``Compose.batch_instantiate(idx)`` makes one
``RandomState(idx)`` per item and passes the same object to each transform's ``instantiate`` (not a
fresh one per transform). Its first draw is tied to the masking draws, which also start from
``RandomState(idx)`` (SPEC 9.1.1). ``authors_seeding=False`` gives each stage an independent stream
keyed by ``(seed, stage)``. FilteredNoise samples come from a torch generator seeded from the
item's seed: the authors use the unseeded global torch RNG and item 0's shape for the whole batch
(SPEC 9.2); that fix is always on and changes no parameter draw.

Speed (SPEC 9.3) and how each stage relates to the authors' algorithm:

* BandPass: the authors run a julius windowed-sinc high-pass then low-pass with ``zeros=2049``
  (up to 450 k taps per side). Here the exact frequency response of those two julius kernels is
  sampled on an FFT grid (cached per cut-off) and the whole batch is filtered with one rfft/irfft,
  zero-phase. Only the boundary handling differs: julius replicates the edge samples before each
  of its two filters; we replicate the input's edge samples for ``_BAND_PASS_PAD`` samples (3 s)
  once, and the FFT wraps around beyond that. Against both kernels convolved linearly with the
  edge-replicated input the output is within 50 dB (100 Hz cut) to 100 dB (>= 300 Hz) SNR.
* ShiftPhase: exactly the authors' (a constant phase added to every bin of a 2048/512 Hann STFT),
  a few items per STFT call; it is cheap either way.
* PitchShift: same algorithm as the authors (torchaudio's phase-vocoder time stretch by r, then
  resampling back to the original length), with their analysis window (sample_rate // 64
  samples) but a hop of a quarter window instead of 1/32: 8x fewer frames, and the onset
  envelope of the result agrees with theirs as well as hop 21 through this code does
  (benchmarks/augment.py). One STFT serves several items with per-item rates. Resampling is
  band-limited FFT resampling instead of julius' sinc kernels (rolloff 0.945). Bins 100 dB below
  the item's peak keep their expected phase advance instead of a random one (see
  ``_phase_vocoder``). ``force_fast_pitch`` keeps the authors' snapping to the ratios i/j built
  from the sample rate.
* Equalizer and FilteredNoise colouring: audiotools' mel equaliser (julius ``SplitBands``, zeros=8)
  as an FFT-domain gain curve built from the same julius kernels. As in audiotools, the drawn
  values are applied as ``10 ** eq`` (log10 amplitude, i.e. 20 * eq dB), not as dB.

Devices. The chain runs on the input's device and every tensor it creates names that device. Three
things are made on the CPU on purpose and copied to the device: the parameter draws (numpy, per
item), the FilteredNoise samples (one CPU generator per item, so the noise is the same on every
device) and the FFT filter responses (numpy, cached per cut-off). Nothing goes back to the CPU
except Python numbers: the input checks (NaN/Inf) and the reverb IR's peak position. On a GPU the
outputs agree with the CPU's to float rounding (tests/tria/test_device.py, ``-m gpu``).

Every stage matches energy and peak-limits, including ShiftPhase and FilteredNoise, which in the
authors' code are plain audiotools transforms that only peak-limit (SPEC 5.3 and the task ask for
all five to match energy).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import Any, Callable, Sequence

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F

__all__ = [
    "AugmentConfig",
    "augment_rhythm",
    "sample_params",
    "band_pass",
    "shift_phase",
    "pitch_shift",
    "fast_pitch_ratios",
    "snap_ratio",
    "equalize",
    "mix_at_snr",
    "reverb",
]

_EPS = 1e-8  # the authors' EPS (tria/constants.py), in energies and SNRs
_ALGORITHM_VERSION = 1  # part of config_id: bump it when the same config starts giving new outputs
# Replicated edge samples around the FFT band-pass. A 100 Hz cut at zeros=2049 rings for ~10 s;
# 2**17 keeps what wraps around the FFT circle below -50 dB (2**14 gives only -33 dB).
_BAND_PASS_PAD = 2**17
_RESAMPLE_PAD = 2**11  # replicated edge samples (output rate) around the FFT resampler
# Items per STFT pass (ShiftPhase, PitchShift). On CPU two items' spectrograms still fit in cache
# and measure 2x faster than eight at once; on a GPU larger passes mean fewer kernel launches
# (16 items of 6 s at r = 2 peak at ~1.5 GB). FFT filters always take the whole batch.
_STFT_CHUNK = {"cpu": 2}
_STFT_CHUNK_DEFAULT = 16
_EQ_ZEROS = 8  # julius SplitBands default, used by audiotools' equalizer
_REVERB_EQ_BANDS = 6  # audiotools RoomImpulseResponse default
_BACKGROUND_EQ_BANDS = 3  # audiotools BackgroundNoise default
_NOISE_SALT = 0x6E6F6973  # keys the per-item noise generator ("nois")
_PARAM_SALT = 0x70617261  # keys the independent parameter streams ("para")
_STAGES = ("band_pass", "shift_phase", "pitch_shift", "equalizer", "filtered_noise", "reverb",
           "background_noise")


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the rhythm-prompt chain. Defaults are the paper's; see ``paper``/``release``.

    Ranges are ``(low, high)`` of a uniform draw; ``*_choices`` are drawn uniformly.
    """

    tfm_prob: float = 0.25  # prob of BandPass, ShiftPhase, Equalizer, FilteredNoise (release: 0.75)
    pitch_prob: float = 1.0
    pitch_semitones: tuple[float, float] = (-6.0, 6.0)  # release: (-6, 12)
    force_fast_pitch: bool = True  # snap to the nearest ratio i/j of the authors' fast set
    lowcut_choices: tuple[int, ...] = tuple(range(100, 1001, 100))  # Hz
    highcut_choices: tuple[int, ...] = tuple(range(2000, 6001, 500))  # Hz
    band_pass_zeros: int = 2049  # julius zero crossings whose response the FFT filter reproduces
    phase_shift: tuple[float, float] = (-math.pi, math.pi)
    eq_bands: int = 6
    eq_amount: tuple[float, float] = (-1.0, 1.0)  # eq = -amount * U(0, 1) per band, in log10 gain
    noise_eq_bands: int = 6
    noise_eq_amount: tuple[float, float] = (-1.0, 1.0)
    snr_db: tuple[float, float] = (10.0, 30.0)
    match_energy: bool = True
    authors_seeding: bool = True  # one RandomState(seed) for all stages; False: a stream per stage
    pitch_window_div: int = 64  # analysis window = sample_rate // 64 samples (the authors' n_fft)
    pitch_overlap: int = 4  # hop = window // 4 (the authors: window // 32, hop 21 at 44.1 kHz)
    reverb: bool = False  # needs `rir` in augment_rhythm
    reverb_prob: float = 1.0
    drr_db: tuple[float, float] = (0.0, 30.0)
    background_noise: bool = False  # needs `noise` in augment_rhythm
    background_prob: float = 1.0
    background_snr_db: tuple[float, float] = (10.0, 30.0)

    def __post_init__(self) -> None:
        for name in ("tfm_prob", "pitch_prob", "reverb_prob", "background_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("pitch_semitones", "phase_shift", "eq_amount", "noise_eq_amount", "snr_db",
                     "drr_db", "background_snr_db"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {value}")
            object.__setattr__(self, name, value)  # lists from YAML become hashable tuples
        for name in ("lowcut_choices", "highcut_choices"):
            value = tuple(int(v) for v in getattr(self, name))
            if not value or min(value) <= 0:
                raise ValueError(f"{name} must be a non-empty list of positive Hz, got {value}")
            object.__setattr__(self, name, value)
        if max(self.lowcut_choices) >= min(self.highcut_choices):
            raise ValueError("every low cut must be below every high cut: "
                             f"{self.lowcut_choices} vs {self.highcut_choices}")
        for name in ("eq_bands", "noise_eq_bands", "band_pass_zeros", "pitch_window_div",
                     "pitch_overlap"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def paper(cls, **overrides: Any) -> AugmentConfig:
        """The paper configs (`conf/paper_exp/*.yml`): tfm_prob 0.25, pitch U(-6, 6)."""
        return cls(**overrides)

    @classmethod
    def release(cls, **overrides: Any) -> AugmentConfig:
        """The release configs (`conf/small_musdb_*.yml`): tfm_prob 0.75, pitch U(-6, 12)."""
        return cls(**{"tfm_prob": 0.75, "pitch_semitones": (-6.0, 12.0), **overrides})

    @cached_property  # writes the instance __dict__ directly, which a frozen dataclass allows
    def config_id(self) -> str:
        """Short stable hash of every field and the algorithm version (for the catalogue)."""
        payload = json.dumps({"algorithm": _ALGORITHM_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------------------------
# Random draws
# ----------------------------------------------------------------------------------------------


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seeds must be integers, got {seed!r}")
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seeds must be in [0, 2**32) (numpy RandomState), got {seed}")
    return int(seed)


def _streams(seed: int, config: AugmentConfig) -> list[np.random.RandomState | np.random.Generator]:
    """One stream per stage: the same RandomState(seed) for all (authors), or independent ones.

    The independent streams are PCG64 generators keyed by (seed, salt, stage): ten times cheaper
    to create than RandomStates, and none starts like the RandomState(seed) the masking uses.
    Both kinds answer the calls made here (choice, uniform, random) the same way.
    """
    if config.authors_seeding:
        return [np.random.RandomState(seed)] * len(_STAGES)
    return [np.random.default_rng([seed, _PARAM_SALT, k]) for k in range(len(_STAGES))]


def sample_params(seed: int, config: AugmentConfig, sample_rate: int = 44100) -> dict[str, Any]:
    """The random draws of one item, as plain JSON-friendly values.

    With ``authors_seeding`` the calls and their order are exactly audiotools' (`_instantiate`
    then the ``rand() <= prob`` mask, stage after stage; ``random()`` draws what ``rand()`` does),
    so the values equal the authors' for the same ``idx``. The extras draw no file choice or offset:
    their arrays come from the caller.

    Args:
        seed: the item's seed (the authors' dataset ``idx``), in [0, 2**32).
        config: the chain's config.
        sample_rate: Hz; the fast pitch ratios are built from its prime factors.

    Returns:
        ``{stage: {"apply": bool, ...}}`` for each stage, plus ``seed`` and ``config_id``.
        Equaliser gains are log10 amplitude gains per mel band (applied as ``10 ** g``).
    """
    seed = _check_seed(seed)
    s = dict(zip(_STAGES, _streams(seed, config)))
    c = config
    p: dict[str, Any] = {"seed": seed, "config_id": c.config_id}

    low = int(s["band_pass"].choice(c.lowcut_choices))
    high = int(s["band_pass"].choice(c.highcut_choices))
    p["band_pass"] = {"apply": bool(s["band_pass"].random() <= c.tfm_prob), "low_hz": low,
                      "high_hz": high}

    shift = float(s["shift_phase"].uniform(*c.phase_shift))
    p["shift_phase"] = {"apply": bool(s["shift_phase"].random() <= c.tfm_prob), "shift_rad": shift}

    semitones = float(s["pitch_shift"].uniform(*c.pitch_semitones))
    apply = bool(s["pitch_shift"].random() <= c.pitch_prob)
    ratio = float(snap_ratio(semitones, sample_rate)) if c.force_fast_pitch else 2 ** (semitones / 12)
    p["pitch_shift"] = {"apply": apply, "semitones": semitones, "ratio": ratio}

    amount = float(s["equalizer"].uniform(*c.eq_amount))
    gains = (-amount * s["equalizer"].random(c.eq_bands)).tolist()
    p["equalizer"] = {"apply": bool(s["equalizer"].random() <= c.tfm_prob), "amount": amount,
                      "gains_log10": gains}

    amount = float(s["filtered_noise"].uniform(*c.noise_eq_amount))
    gains = (-amount * s["filtered_noise"].random(c.noise_eq_bands)).tolist()
    snr = float(s["filtered_noise"].uniform(*c.snr_db))
    noise_seed = int(np.random.SeedSequence([seed, _NOISE_SALT]).generate_state(1)[0])
    p["filtered_noise"] = {"apply": bool(s["filtered_noise"].random() <= c.tfm_prob), "amount": amount,
                           "gains_log10": gains, "snr_db": snr, "noise_seed": noise_seed}

    if c.reverb:  # audiotools: eq_amount is the constant 1.0, so only the band draws remain
        gains = (-s["reverb"].random(_REVERB_EQ_BANDS)).tolist()
        drr = float(s["reverb"].uniform(*c.drr_db))
        p["reverb"] = {"apply": bool(s["reverb"].random() <= c.reverb_prob), "gains_log10": gains,
                       "drr_db": drr}
    if c.background_noise:
        gains = (-s["background_noise"].random(_BACKGROUND_EQ_BANDS)).tolist()
        snr = float(s["background_noise"].uniform(*c.background_snr_db))
        p["background_noise"] = {"apply": bool(s["background_noise"].random() <= c.background_prob),
                                 "gains_log10": gains, "snr_db": snr}
    return p


# ----------------------------------------------------------------------------------------------
# Filters: julius windowed-sinc kernels, applied in the FFT domain
# ----------------------------------------------------------------------------------------------


def _fast_len(n: int) -> int:
    return scipy.fft.next_fast_len(int(n), real=True)


def _half_size(cutoff_hz: float, sample_rate: int, zeros: float) -> int:
    """julius LowPassFilters: the kernel has 2 * half_size + 1 taps."""
    return int(zeros / (cutoff_hz / sample_rate) / 2)


@lru_cache(maxsize=64)  # ~1 MB each at 6 s; one clip length needs 19 band-pass + 10 EQ cut-offs
def _lowpass_response(cutoff: float, half_size: int, n_fft: int) -> np.ndarray:
    """Real frequency response (n_fft // 2 + 1,) of julius' low-pass kernel at ``cutoff`` (f / sr).

    julius: ``2 c * hann(2h + 1, periodic=False) * sinc(2 c pi t)``, normalised to unit sum. Folding
    the kernel onto a circle of n_fft samples before the DFT samples its DTFT exactly at the FFT
    bins, even when the kernel is longer than n_fft (a 100 Hz cut at zeros=2049 has 450 k taps per
    side). The kernel is symmetric, so the response is real: the filter is zero-phase.
    """
    t = np.arange(-half_size, half_size + 1)
    kernel = 2 * cutoff * (0.5 + 0.5 * np.cos(np.pi * t / half_size)) * np.sinc(2 * cutoff * t)
    kernel /= kernel.sum()
    folded = np.bincount(t % n_fft, weights=kernel, minlength=n_fft)
    return np.fft.rfft(folded).real.astype(np.float32)


def _mel_cutoffs(sample_rate: int, n_bands: int) -> np.ndarray:
    """The n_bands - 1 inner cut-offs (Hz) of julius SplitBands: mel-spaced over [0, sr / 2]."""
    mel_top = 2595 * np.log10(1 + (sample_rate / 2) / 700)
    return 700 * (10 ** (np.linspace(0, mel_top, n_bands + 1)[1:-1] / 2595) - 1)


def _eq_half_size(sample_rate: int, n_bands: int) -> int:
    """Kernel half size shared by all SplitBands low-passes (set by the lowest cut-off)."""
    cutoffs = _mel_cutoffs(sample_rate, n_bands)
    return _half_size(cutoffs.min(), sample_rate, _EQ_ZEROS) if len(cutoffs) else 0


@lru_cache(maxsize=8)
def _mel_band_responses(sample_rate: int, n_bands: int, n_fft: int) -> np.ndarray:
    """(n_bands, n_fft // 2 + 1) responses of julius ``SplitBands(sample_rate, n_bands)``.

    The bands are differences of low-passes at mel-spaced cut-offs that share one kernel size
    (set by the lowest cut-off), so they sum to 1: equal gains leave the signal unchanged.
    """
    h = _eq_half_size(sample_rate, n_bands)
    lows = [np.zeros(n_fft // 2 + 1, np.float32)]
    lows += [_lowpass_response(c / sample_rate, h, n_fft) for c in _mel_cutoffs(sample_rate, n_bands)]
    lows.append(np.ones(n_fft // 2 + 1, np.float32))
    return np.diff(np.stack(lows), axis=0)


def _fft_filter(x: torch.Tensor, response: torch.Tensor, n_fft: int, pad: int) -> torch.Tensor:
    """Zero-phase filter rows of x (B, N) by real responses (B or 1, n_fft // 2 + 1).

    The rows are padded by replicating their edge samples (as julius does) to n_fft samples,
    ``pad`` of them on the left, so the circular wrap-around lands far from the signal.
    """
    n = x.shape[-1]
    padded = F.pad(x[:, None], (pad, n_fft - n - pad), mode="replicate")[:, 0]
    y = torch.fft.irfft(torch.fft.rfft(padded) * response, n=n_fft)
    return y[:, pad:pad + n]


def _as_tensor(rows: Sequence[np.ndarray], like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.stack(rows)).to(device=like.device, dtype=like.dtype)


def band_pass(audio: torch.Tensor, sample_rate: int, low_hz: Sequence[float],
              high_hz: Sequence[float], zeros: int = 2049) -> torch.Tensor:
    """julius high-pass at ``low_hz`` then low-pass at ``high_hz`` (per item), via one FFT.

    Args:
        audio: (B, N) mono rows.
        sample_rate: Hz.
        low_hz, high_hz: (B,) cut-offs in Hz, rounded to 1 Hz as the authors' ``quantize_hz``.
        zeros: julius zero crossings (the authors' configs: 2049).

    Returns:
        (B, N) filtered rows.
    """
    n_fft = _fast_len(audio.shape[-1] + 2 * _BAND_PASS_PAD)
    rows = []
    for lo, hi in zip(low_hz, high_hz):
        lo, hi = round(lo), round(hi)
        highpass = 1 - _lowpass_response(lo / sample_rate, _half_size(lo, sample_rate, zeros), n_fft)
        lowpass = _lowpass_response(hi / sample_rate, _half_size(hi, sample_rate, zeros), n_fft)
        rows.append(highpass * lowpass)
    return _fft_filter(audio, _as_tensor(rows, audio), n_fft, _BAND_PASS_PAD)


def equalize(audio: torch.Tensor, sample_rate: int, gains_log10: torch.Tensor) -> torch.Tensor:
    """audiotools' mel equaliser: band k of julius SplitBands scaled by ``10 ** gains_log10[:, k]``.

    Args:
        audio: (B, N) rows.
        sample_rate: Hz.
        gains_log10: (B, n_bands) log10 amplitude gains (audiotools calls them dB but applies 10**g).

    Returns:
        (B, N) equalised rows.
    """
    n_bands = gains_log10.shape[-1]
    pad = _eq_half_size(sample_rate, n_bands)
    n_fft = _fast_len(audio.shape[-1] + 2 * pad)
    bands = torch.from_numpy(_mel_band_responses(sample_rate, n_bands, n_fft)).to(audio)
    gains = torch.pow(10.0, gains_log10.to(audio))
    curve = gains[:, :1] * bands[0]
    for k in range(1, n_bands):  # explicit order: each row's curve is independent of the batch
        curve = curve + gains[:, k:k + 1] * bands[k]
    return _fft_filter(audio, curve, n_fft, pad)


def shift_phase(audio: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Add a constant phase ``shifts[b]`` (radians) to every STFT bin of row b (audiotools).

    The authors' STFT (2048-sample Hann window, hop 512, centred, reflect-padded), a few items
    per call (see _STFT_CHUNK). A rotation of the whole-signal spectrum would be cheaper, but with a
    46 ms window the framewise rotation differs from it below ~50 Hz (kicks), by ~3 % of the
    signal: we keep theirs.

    Args:
        audio: (B, N) rows.
        shifts: (B,) phases.

    Returns:
        (B, N) rows; their STFT magnitudes are unchanged up to STFT consistency (~1 %).
    """
    window = torch.hann_window(2048, dtype=audio.dtype, device=audio.device)
    rotations = torch.polar(torch.ones_like(shifts), shifts).to(audio.device)
    out = []
    for rows in _chunks(audio.shape[0], audio.device):
        spec = torch.stft(audio[rows], 2048, 512, window=window, center=True, pad_mode="reflect",
                          return_complex=True)
        spec = spec * rotations[rows, None, None]
        out.append(torch.istft(spec, 2048, 512, window=window, center=True, length=audio.shape[-1]))
    return torch.cat(out)


def _chunks(n: int, device: torch.device) -> list[slice]:
    """Item slices for the STFT-based stages (see _STFT_CHUNK)."""
    size = _STFT_CHUNK.get(device.type, _STFT_CHUNK_DEFAULT)
    return [slice(start, start + size) for start in range(0, n, size)]


# ----------------------------------------------------------------------------------------------
# Pitch shift
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _fast_semitones(sample_rate: int) -> np.ndarray:
    return np.array([12 * math.log2(r) for r in fast_pitch_ratios(sample_rate)])


@lru_cache(maxsize=8)
def fast_pitch_ratios(sample_rate: int = 44100) -> tuple[Fraction, ...]:
    """The authors' ``force_fast`` ratios: i / j in [0.5, 2], i != j, i and j divisors > 1 of sr.

    (Products of sub-multisets of the prime factors of 44100 = 2^2 3^2 5^2 7^2 are its divisors.)
    """
    divisors = [d for d in range(2, sample_rate + 1) if sample_rate % d == 0]
    ratios = {Fraction(i, j) for i in divisors for j in divisors
              if i != j and Fraction(1, 2) <= Fraction(i, j) <= 2}
    return tuple(sorted(ratios))


def snap_ratio(semitones: float, sample_rate: int = 44100) -> Fraction:
    """The fast ratio nearest to ``semitones`` in semitone distance (ties: the smaller ratio)."""
    ratios = fast_pitch_ratios(sample_rate)
    if not ratios:
        raise ValueError(f"sample rate {sample_rate} has no fast pitch ratios; "
                         "set force_fast_pitch=False")
    return ratios[int(np.argmin(np.abs(_fast_semitones(sample_rate) - semitones)))]


def _phase_vocoder(spec: torch.Tensor, rates: Sequence[float], hop: int, n_fft: int) -> torch.Tensor:
    """torchaudio's ``phase_vocoder`` with one rate per item (B,), on (B, F, T) -> (B, F, T').

    Output frame k of item b reads input position k * rate_b: magnitudes are interpolated
    linearly and phases accumulate the measured phase advance. Frames past an item's end
    (items with larger rates finish earlier) are zero.
    """
    b, _, t = spec.shape
    n_out = int(math.ceil(t / min(rates)))
    # k * rate, nudged so that positions meant to be integers (rate 2/3, k = 3) never floor down.
    # float64 products and sums are correctly rounded on every device: the same frames everywhere.
    rate = torch.tensor(rates, dtype=torch.float64, device=spec.device)
    steps = torch.arange(n_out, dtype=torch.float64, device=spec.device)[None] * rate[:, None] + 1e-9
    valid = (steps < t)[..., None]
    alpha = (steps - steps.floor()).to(spec.real.dtype)[..., None]
    index = steps.floor().long().clamp(max=t)  # (B, T')
    rows = torch.arange(b, device=spec.device)[:, None]
    # Time-major (B, T + 2, F), so that picking frames copies whole rows; torchaudio pads two
    # zero frames so that index + 1 always exists.
    padded = F.pad(spec, (0, 2)).transpose(1, 2).contiguous()
    mag, ang = padded.abs(), padded.angle()
    # Bins below -100 dB re the item's peak (float rounding noise, e.g. above a band-pass) have a
    # random angle; torchaudio accumulates it, so their phase, and the output wherever they come
    # back (the edges), would change with the last bit of the input. They get the expected
    # advance of their bin frequency instead, and phase 0 at the start.
    live = mag > 1e-5 * mag.amax(dim=(1, 2), keepdim=True)
    expected = torch.arange(mag.shape[-1], device=mag.device, dtype=mag.dtype) * (2 * math.pi * hop / n_fft)
    # Phase advance of each input hop. torchaudio unwraps it around the expected advance; since
    # the output hop equals the input hop only its value modulo 2 pi matters, so wrapping it to
    # [-pi, pi) changes nothing and keeps the float32 running sum small.
    advance = torch.where(live[:, 1:] & live[:, :-1], ang[:, 1:] - ang[:, :-1], expected)
    advance = torch.remainder(advance + math.pi, 2 * math.pi) - math.pi
    start = torch.where(live[:, :1], ang[:, :1], 0.0)
    phase = torch.cat([start, advance[rows, index][:, :-1]], dim=1).cumsum(dim=1)
    magnitude = torch.lerp(mag[rows, index], mag[rows, index + 1], alpha) * valid
    return torch.polar(magnitude, phase).transpose(1, 2)  # (B, F, T')


def _resample_rows(rows: Sequence[torch.Tensor], ratios: Sequence[float], n_out: int) -> torch.Tensor:
    """Band-limited FFT resampling of row b by 1 / ratios[b], first n_out output samples (B, n_out).

    Each row is edge-padded to round(M * ratio) samples so that all rows map onto one output
    grid of M samples: the spectra are cut (ratio > 1: anti-aliasing) or zero-extended (ratio < 1)
    to M // 2 + 1 bins and inverted together.
    """
    m_out = _fast_len(n_out + 2 * _RESAMPLE_PAD)
    spectra = []
    for row, ratio in zip(rows, ratios):
        m_in, pad_in = round(m_out * ratio), round(_RESAMPLE_PAD * ratio)
        padded = F.pad(row[None, None], (pad_in, m_in - row.shape[-1] - pad_in), mode="replicate")
        spec = torch.fft.rfft(padded[0, 0])[: m_out // 2 + 1]
        spectra.append(F.pad(spec, (0, m_out // 2 + 1 - spec.shape[-1])) * (m_out / m_in))
    out = torch.fft.irfft(torch.stack(spectra), n=m_out)
    return out[:, _RESAMPLE_PAD:_RESAMPLE_PAD + n_out]


def pitch_shift(audio: torch.Tensor, sample_rate: int, ratios: Sequence[float],
                window_div: int = 64, overlap: int = 4) -> torch.Tensor:
    """Shift every frequency of row b by ``ratios[b]`` keeping the duration (the authors' method).

    Phase-vocoder time stretch by rate 1 / r (Hann window of sample_rate // window_div samples,
    hop window // overlap, centred STFT) to int(N * r) samples, then resampling by 1 / r, then
    trim to N, as in the authors' ``PitchShift._transform``.

    Args:
        audio: (B, N) rows.
        sample_rate: Hz.
        ratios: (B,) frequency ratios r > 0 (2.0 = one octave up).
        window_div, overlap: analysis window and hop, see above.

    Returns:
        (B, N) pitch-shifted rows.
    """
    n = audio.shape[-1]
    win = sample_rate // window_div
    hop, n_fft = max(1, win // overlap), _fast_len(win)
    window = torch.hann_window(win, dtype=audio.dtype, device=audio.device)
    out = []
    for rows in _chunks(audio.shape[0], audio.device):
        r = [float(v) for v in ratios[rows]]
        spec = torch.stft(audio[rows], n_fft, hop, win, window, center=True, pad_mode="reflect",
                          return_complex=True)
        stretched = _phase_vocoder(spec, [1.0 / v for v in r], hop, n_fft)
        # One iSTFT per item over its own frames, as the authors do per ratio group: a shared
        # call would normalise each item's last samples by the window of the zero frames after it.
        items = [torch.istft(stretched[i, :, :math.ceil(spec.shape[-1] * v)], n_fft, hop, win, window,
                             center=True, length=int(n * v)) for i, v in enumerate(r)]
        out.append(_resample_rows(items, r, n))
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# Noise and reverb
# ----------------------------------------------------------------------------------------------


def _energy(x: torch.Tensor) -> torch.Tensor:
    """Mean square per row, accumulated in float64 (B,)."""
    return x.double().square().mean(dim=-1)


def mix_at_snr(audio: torch.Tensor, other: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """``audio + g * other`` with g such that the energy ratio is ``snr_db`` (the authors' ``_mix``).

    Args:
        audio, other: (B, N) rows.
        snr_db: (B,) signal-to-noise ratios in dB.
    """
    level = 10 * torch.log10(_energy(audio) + _EPS) - 10 * torch.log10(_energy(other) + _EPS)
    scale = torch.pow(10.0, (level - snr_db.double().to(level.device)) / 20)
    return audio + scale.to(audio.dtype)[:, None] * other


def _item_noise(seeds: Sequence[int], n: int, like: torch.Tensor) -> torch.Tensor:
    """(B, n) white Gaussian noise, row b from its own CPU generator (same on every device).

    The authors peak-normalise the noise first; mix_at_snr is scale-free, so that step is omitted.
    """
    rows = [torch.randn(n, generator=torch.Generator("cpu").manual_seed(s), device="cpu") for s in seeds]
    return torch.stack(rows).to(device=like.device, dtype=like.dtype)


def _alter_drr(ir: torch.Tensor, sample_rate: int, drr_db: float) -> torch.Tensor:
    """audiotools ``alter_drr`` on one IR (R,): scale the direct path (+-2.5 ms Hann) to a DRR."""
    peak, half = int(torch.argmax(ir)), int(sample_rate * 0.0025)
    lo, hi = max(0, peak - half), min(ir.shape[-1], peak + half + 1)
    window = torch.zeros_like(ir)
    window[lo:hi] = torch.hann_window(hi - lo, periodic=True, dtype=ir.dtype, device=ir.device)
    early = torch.zeros_like(ir)
    early[lo:hi] = ir[lo:hi]
    late = ir - early
    a = (window.square() * early.square()).sum()
    b = (2 * (1 - window) * window * early.square()).sum()
    c = ((1 - window).square() * early.square()).sum() - 10 ** (drr_db / 10) * late.square().sum()
    alpha = (-b + (b * b - 4 * a * c).clamp_min(0).sqrt()) / (2 * a).clamp_min(_EPS)
    alpha = torch.maximum(alpha, late.abs().max() / early.abs().max().clamp_min(_EPS))
    return alpha * window * early + (1 - window) * early + late


def reverb(audio: torch.Tensor, sample_rate: int, irs: torch.Tensor, drr_db: Sequence[float],
           gains_log10: torch.Tensor) -> torch.Tensor:
    """Convolve row b with impulse response b after audiotools' IR equaliser and DRR change.

    Like audiotools' ``apply_ir``: the IR is cut or zero-padded to one second, equalised, given
    the drawn DRR, and rolled so its peak is at t = 0 (no added delay). Unlike it, the convolution
    is linear (zero-padded FFT), so the reverb tail of the excerpt's end does not wrap onto its start.

    Args:
        audio: (B, N) rows.
        sample_rate: Hz.
        irs: (B, R) impulse responses.
        drr_db: (B,) direct-to-reverberant ratios in dB.
        gains_log10: (B, 6) IR equaliser gains.

    Returns:
        (B, N) reverberant rows (unnormalised).
    """
    irs = F.pad(irs[:, :sample_rate], (0, max(0, sample_rate - irs.shape[-1])))
    irs = equalize(irs, sample_rate, gains_log10)
    irs = torch.stack([_alter_drr(ir, sample_rate, d) for ir, d in zip(irs, drr_db)])
    irs = torch.stack([torch.roll(ir, -int(ir.abs().argmax())) for ir in irs])
    n = audio.shape[-1]
    n_fft = _fast_len(n + irs.shape[-1])
    y = torch.fft.irfft(torch.fft.rfft(audio, n=n_fft) * torch.fft.rfft(irs, n=n_fft), n=n_fft)
    return y[:, :n]


# ----------------------------------------------------------------------------------------------
# The chain
# ----------------------------------------------------------------------------------------------


def _normalize(y: torch.Tensor, x: torch.Tensor, match_energy: bool) -> torch.Tensor:
    """The authors' post-transform step: match x's energy, then scale rows down to |y| <= 1.

    Energies are mean squares plus the authors' EPS, so a stage whose output is near silence
    (RMS below ~1e-3, e.g. a band-pass that leaves little) is not fully restored, as in theirs.
    (Their transforms also peak-limit before matching energy; the energy match is scale-free, so
    that first limit changes nothing and is skipped.)
    """
    if match_energy:
        gain = torch.sqrt((_energy(x) + _EPS) / (_energy(y) + _EPS))
        y = y * gain.to(y.dtype)[:, None]
    return y / y.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)


def _run_stage(x: torch.Tensor, apply: Sequence[bool],
               fn: Callable[[torch.Tensor, list[int]], torch.Tensor], match_energy: bool) -> torch.Tensor:
    """Apply ``fn(rows, item_indices)`` to the selected items only, then normalise them."""
    idx = [i for i, a in enumerate(apply) if a]
    if not idx:
        return x
    sel = torch.tensor(idx, device=x.device)
    rows = x.index_select(0, sel)
    return x.index_copy(0, sel, _normalize(fn(rows, idx), rows, match_energy))


def _check_audio(audio: Any, sample_rate: Any, config: AugmentConfig) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor):
        raise ValueError(f"audio must be a torch.Tensor (B, 1, N), got {type(audio).__name__}")
    if audio.ndim != 3 or audio.shape[1] != 1:
        raise ValueError(f"audio must have shape (B, 1, N) (mono), got {tuple(audio.shape)}")
    if not audio.is_floating_point():
        raise ValueError(f"audio must be floating point, got {audio.dtype}")
    if audio.shape[0] == 0 or audio.shape[-1] == 0:
        raise ValueError(f"audio is empty: shape {tuple(audio.shape)}")
    if not torch.isfinite(audio).all():
        raise ValueError("audio contains NaN or Inf")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if max(config.highcut_choices) >= sample_rate / 2:
        raise ValueError(f"high cut {max(config.highcut_choices)} Hz is not below Nyquist "
                         f"at {sample_rate} Hz")
    win = sample_rate // config.pitch_window_div
    if win < 4 or audio.shape[-1] < _fast_len(win):
        raise ValueError(f"audio has {audio.shape[-1]} samples; the pitch shifter needs at least "
                         f"{_fast_len(max(win, 4))} at {sample_rate} Hz")
    dtype = audio.dtype if audio.dtype == torch.float64 else torch.float32
    return audio[:, 0].to(dtype)


def _check_extra(name: str, array: Any, enabled: bool, x: torch.Tensor) -> torch.Tensor | None:
    """Caller-given IRs or noise as (B, R) rows; shapes (R,), (B, R) or (B, 1, R) are accepted."""
    if not enabled:
        if array is not None:
            raise ValueError(f"`{name}` was given but the config has it off (its config_id would lie)")
        return None
    if not isinstance(array, torch.Tensor):
        raise ValueError(f"the config turns `{name}` on: pass it as a torch.Tensor")
    rows = array.reshape(1, -1) if array.ndim == 1 else array.reshape(array.shape[0], -1)
    if array.ndim > 3 or (array.ndim == 3 and array.shape[1] != 1) or rows.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"`{name}` must be (R,), (B, R) or (B, 1, R) with B={x.shape[0]}, "
                         f"got {tuple(array.shape)}")
    if rows.shape[-1] == 0 or not torch.isfinite(rows).all() or not (rows != 0).any(dim=-1).all():
        raise ValueError(f"`{name}` must be non-empty, finite and not silent")
    return rows.to(x).expand(x.shape[0], -1)


def augment_rhythm(audio: torch.Tensor, sample_rate: int, seeds: Sequence[int], config: AugmentConfig,
                   rir: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Run the rhythm-prompt chain on a batch, item b seeded by ``seeds[b]`` only.

    Args:
        audio: (B, 1, N) float mono.
        sample_rate: Hz (the authors: 44100).
        seeds: (B,) per-item seeds in [0, 2**32), e.g. the excerpt index.
        config: the chain; ``AugmentConfig.paper()`` or ``.release()``.
        rir: impulse responses, (R,) shared or (B, R) / (B, 1, R); required iff ``config.reverb``.
        noise: background noise, same shapes; required iff ``config.background_noise``.

    Returns:
        (B, 1, N) augmented audio, same dtype as the input (float16/bfloat16 are processed in
        float32). Item b depends only on its own audio, seed and extras rows.

    Raises:
        ValueError: wrong rank or channels, empty, NaN/Inf, bad seeds, or extras that do not
            match the config.
    """
    x = _check_audio(audio, sample_rate, config)
    seeds = [_check_seed(s) for s in seeds]
    if len(seeds) != x.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {x.shape[0]}")
    irs = _check_extra("rir", rir, config.reverb, x)
    noises = _check_extra("noise", noise, config.background_noise, x)
    params = [sample_params(s, config, sample_rate) for s in seeds]

    def col(stage: str, key: str, idx: list[int]) -> list[Any]:
        return [params[i][stage][key] for i in idx]

    def tensor(stage: str, key: str, idx: list[int]) -> torch.Tensor:
        return torch.tensor(col(stage, key, idx), dtype=torch.float64, device=x.device)

    stages: list[tuple[str, Callable[[torch.Tensor, list[int]], torch.Tensor]]] = [
        ("band_pass", lambda v, i: band_pass(v, sample_rate, col("band_pass", "low_hz", i),
                                             col("band_pass", "high_hz", i), config.band_pass_zeros)),
        ("shift_phase", lambda v, i: shift_phase(v, tensor("shift_phase", "shift_rad", i).to(v.dtype))),
        ("pitch_shift", lambda v, i: pitch_shift(v, sample_rate, col("pitch_shift", "ratio", i),
                                                 config.pitch_window_div, config.pitch_overlap)),
        ("equalizer", lambda v, i: equalize(v, sample_rate, tensor("equalizer", "gains_log10", i))),
        ("filtered_noise", lambda v, i: mix_at_snr(v, equalize(
            _item_noise(col("filtered_noise", "noise_seed", i), v.shape[-1], v), sample_rate,
            tensor("filtered_noise", "gains_log10", i)), tensor("filtered_noise", "snr_db", i))),
    ]
    if irs is not None:
        stages.append(("reverb", lambda v, i: reverb(v, sample_rate, irs[i], col("reverb", "drr_db", i),
                                                     tensor("reverb", "gains_log10", i))))
    if noises is not None:
        stages.append(("background_noise", lambda v, i: mix_at_snr(v, equalize(
            _fit_length(noises[i], v.shape[-1]), sample_rate, tensor("background_noise", "gains_log10", i)),
            tensor("background_noise", "snr_db", i))))
    for name, fn in stages:
        x = _run_stage(x, [p[name]["apply"] for p in params], fn, config.match_energy)
    return x[:, None].to(audio.dtype)


def _fit_length(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad or cut (B, M) rows to n samples, as audiotools' ``_mix`` does with the noise."""
    return F.pad(rows[:, :n], (0, max(0, n - rows.shape[-1])))
