"""The augmentation chain and the rhythm features are device-agnostic (issue 13).

There is no GPU on the CI machine, so device bugs are caught on the CPU in two ways:

* every torch factory call made by ``tria/features.py`` and ``tria/transforms.py`` names its device
  (recorded with a TorchFunctionMode while the whole chain runs), and
* the chain runs with a foreign default device (``meta``, which holds no data): a tensor created on
  the default device instead of the input's would fail or come back on ``meta``. The outputs must
  stay on the input's device and equal a normal run bit for bit.

The documented CPU steps are explicit: the float64 loudness IIR (``integrated_loudness``), the
per-item noise generators (``_item_noise``, the same noise on every device), the julius resampling
kernel and the FFT filter responses, which are built on the CPU and copied to the input's device.

``TestCuda`` compares CPU and CUDA outputs where a GPU exists (``-m gpu``; skipped without one).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from synth_audio import SR, hat, kick, place
from torch.overrides import TorchFunctionMode

import tria.features as features_module
import tria.transforms as transforms_module
from tria.features import RhythmFeatureConfig, align_features, integrated_loudness, rhythm_features
from tria.transforms import AugmentConfig, augment_rhythm

FACTORIES = {torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.linspace,
             torch.logspace, torch.tensor, torch.as_tensor, torch.randn, torch.rand, torch.randint,
             torch.randperm, torch.eye, torch.hann_window, torch.hamming_window, torch.scalar_tensor}
CHECKED_FILES = {features_module.__file__, transforms_module.__file__}

FEATURE_CONFIGS = {
    "paper": RhythmFeatureConfig.paper(),
    "release": RhythmFeatureConfig.release(),
    "default": RhythmFeatureConfig(),
    "fixed_edges": RhythmFeatureConfig.paper(n_bands=3, adaptive=False, band_edges_hz=(200.0, 2000.0)),
    "rms": RhythmFeatureConfig.release(loudness_norm="rms"),
}
EVERY_STAGE = AugmentConfig.release(tfm_prob=1.0, reverb=True, background_noise=True)


def drums(batch: int = 3, seconds: float = 1.5) -> torch.Tensor:
    """(B, 1, N) mono drum patterns at different levels."""
    rows = []
    for b in range(batch):
        events = [(t, kick()) for t in np.arange(0.0, seconds - 0.3, 0.5)]
        events += [(t, hat(seed=b)) for t in np.arange(0.25, seconds - 0.1, 0.25)]
        rows.append(place(events, seconds) * 10 ** (-6 * b / 20))
    return torch.from_numpy(np.stack(rows))[:, None].float()


def extras(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator("cpu").manual_seed(5)
    t = torch.arange(SR // 2) / SR
    rir = torch.randn(batch, SR // 2, generator=g) * torch.exp(-t / 0.1)
    rir[:, 0] = 1.0
    return rir, 0.1 * torch.randn(batch, SR, generator=g)


RIR, NOISE = extras(3)


def run_everything(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every public path of the chain and the features on x (3, 1, N) and on a stereo copy."""
    rir, noise = RIR, NOISE
    out = {"augment": augment_rhythm(x, SR, [11, 12, 13], EVERY_STAGE,
                                     rir=rir.to(x.device), noise=noise.to(x.device))}
    stereo = torch.cat([x, 0.5 * x.flip(-1)], dim=1)
    for name, cfg in FEATURE_CONFIGS.items():
        out[name] = rhythm_features(stereo, SR, cfg)
    out["48k"] = rhythm_features(stereo[..., :48_000], 48_000, RhythmFeatureConfig.paper())
    out["aligned"] = align_features(out["paper"], 100)
    out["loudness"] = integrated_loudness(stereo, SR)
    return out


class FactoryRecorder(TorchFunctionMode):
    """Records torch factory calls made directly from the checked files without ``device=``."""

    def __init__(self) -> None:
        super().__init__()
        self.missing: list[str] = []
        self.seen = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            caller = sys._getframe(1)
            if caller.f_code.co_filename in CHECKED_FILES:
                self.seen += 1
                if "device" not in kwargs:
                    self.missing.append(f"{caller.f_code.co_filename.rsplit('/', 1)[-1]}:{caller.f_lineno} "
                                        f"{func.__name__}")
        return func(*args, **kwargs)


def test_every_factory_call_names_its_device():
    recorder = FactoryRecorder()
    with recorder:
        run_everything(drums())
    assert recorder.seen >= 5, "the recorder saw too few factory calls to mean anything"
    assert recorder.missing == [], f"factory calls without device=: {sorted(set(recorder.missing))}"


def test_recorder_catches_a_call_without_device():
    recorder = FactoryRecorder()
    with recorder:
        exec(compile("torch.zeros(3)", features_module.__file__, "exec"), {"torch": torch})
    assert recorder.missing and recorder.missing[0].endswith("zeros")


def test_outputs_unchanged_under_a_foreign_default_device():
    x = drums()
    expected = run_everything(x)
    with torch.device("meta"):
        got = run_everything(x)
    assert set(got) == set(expected)
    for name, value in got.items():
        assert value.device.type == "cpu", f"{name} came back on {value.device}"
        assert torch.equal(value, expected[name]), f"{name} changed under a foreign default device"
    assert expected["augment"].abs().amax() > 0 and expected["paper"].amax() > 0


@pytest.mark.gpu
class TestCuda:
    """CPU vs CUDA. Runs only where a GPU is visible (not on the CI machine)."""

    def test_features_match_cpu(self):
        x = torch.cat([drums()] * 2, dim=1)
        assert torch.equal(integrated_loudness(x.cuda(), SR).cpu(), integrated_loudness(x, SR))  # CPU IIR
        for name, cfg in FEATURE_CONFIGS.items():
            cpu = rhythm_features(x, SR, cfg)
            gpu = rhythm_features(x.cuda(), SR, cfg)
            assert gpu.device.type == "cuda"
            # cuFFT and MKL differ in the last bits, so a value sitting on a rounding boundary may
            # take the other side: at most one step, and rarely.
            steps = (gpu.cpu() - cpu).abs() * (cfg.quantization_levels - 1)
            assert float(steps.max()) <= 1 + 1e-5, name
            assert float((steps > 1e-5).float().mean()) <= 0.002, name

    def test_augmentation_matches_cpu(self):
        x = drums()
        rir, noise = extras(x.shape[0])
        cpu = augment_rhythm(x, SR, [11, 12, 13], EVERY_STAGE, rir=rir, noise=noise)
        gpu = augment_rhythm(x.cuda(), SR, [11, 12, 13], EVERY_STAGE, rir=rir.cuda(), noise=noise.cuda())
        assert gpu.device.type == "cuda"
        err = (gpu.cpu().double() - cpu.double()).square().mean(-1)
        snr_db = 10 * torch.log10(cpu.double().square().mean(-1) / err.clamp_min(1e-30))
        assert float(snr_db.min()) > 40.0, snr_db  # as test_transforms: the phase vocoder spreads rounding
