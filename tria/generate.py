"""Rhythm prompt + timbre prompt + checkpoint -> drums (SPEC 6.1), as a library function and a CLI.

    python -m tria.generate --rhythm tap.wav --timbre kit.wav --checkpoint runs/x/checkpoints/latest.pt \\
        --out drums.wav [--codec-weights PATH] [--seed 0] [--n-outputs 1] [--plot feats.png]

The timbre prompt (at most 2 s) becomes a visible prefix of codec tokens; the rhythm prompt (at most
6 s minus that) is replaced by hidden tokens that carry its rhythm features; the model fills them in,
codebook by codebook, and only the generated frames are decoded. The output has the rhythm prompt's
length (rounded down to whole codec frames), at -20 LUFS, peak-limited to 1.

Sampler settings default to the authors' training-time samples (`--preset train`: top-p 0.85,
CFG 2.0, causal bias 1.0, 8 iterations per codebook); `--preset app` gives the authors' Gradio
page (top-p off), `--preset authors` the bare `TRIA.inference` signature (no top-p, CFG, bias).
Any of the sampler flags then overrides the preset; each takes one value or 9 comma-separated
values (one per codebook, coarse to fine).

Exit codes: 0 done, 2 a problem with the inputs (unreadable audio, too-short prompt, bad or
mismatched checkpoint or codec), reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import julius
import numpy as np
import torch

from tria.audio import AudioError, check_audio, load_audio, resample, save_audio
from tria.checkpoint import RELEASES, CheckpointError, build_model_from_checkpoint, load_checkpoint, resolve_checkpoint
from tria.codec import Codec, codec_from_id, resolve_device
from tria.features import RhythmFeatureConfig, align_features, normalize_level, peak_limit, rhythm_features, rms_db
from tria.model import TRIA
from tria.sampling import DecodeStep, SamplerConfig, generate, prompt_layout

__all__ = [
    "GenerateError", "LoadedCheckpoint", "load_for_generation", "prepare_prompts", "generate_drums",
    "filter_rhythm", "features_figure", "features_picture", "save_features_plot", "PRESETS", "main",
    "add_checkpoint_args", "checkpoint_options",
]

SAMPLE_RATE = 44_100
MIN_RHYTHM_S = 0.5  # shorter rhythm prompts give too few frames (and feature windows) to follow
MIN_TIMBRE_S = 0.25  # a prefix of ~21 codec frames: less gives the model almost no kit to copy
FILTER_HIGHPASS_HZ = 250.0  # "Filter Inputs" of the authors' app (SPEC 6.1)
FILTER_LOWPASS_HZ = 8000.0
FILTER_ZEROS = 51  # sinc half-width in zero crossings, as audiotools' high_pass/low_pass
PRESETS: dict[str, Callable[[], SamplerConfig]] = {
    "train": SamplerConfig,  # the paper's training-time samples (SPEC 6.3, train.py / YAML column)
    "app": SamplerConfig.app,
    "authors": SamplerConfig.authors_signature,
}


class GenerateError(ValueError):
    """Inputs that cannot give drums: a prompt too short, a codec or feature config that does not match."""


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedCheckpoint:
    """What generation needs from a checkpoint: the model, its codec and its feature config."""

    path: Path
    model: TRIA
    codec: Codec
    features: RhythmFeatureConfig
    codec_id: str
    step: int | None

    def describe(self) -> str:
        c = self.model.cfg
        step = f", step {self.step}" if self.step is not None else ""
        return (f"checkpoint {self.path} (TRIA C={c.n_channels} L={c.n_layers} F={c.n_feats}{step}); "
                f"features {self.features.config_id} ({self.features.sample_rate} Hz, "
                f"{self.features.n_bands} bands, {self.features.quantization_levels} levels); "
                f"codec {self.codec_id}: {self.codec.description}")


def load_for_generation(checkpoint: str | Path, codec_weights: str | Path | None = None,
                        device: str = "cpu", model_config: Any = None, features: Any = None) -> LoadedCheckpoint:
    """Load a checkpoint, check its feature config, and rebuild the codec its tokens came from.

    Args:
        checkpoint: a "tria-checkpoint-v1" file, an authors' state dict (`model.pt`), or the name
            of an authors' release (`tria.checkpoint.RELEASES`), downloaded once into the cache.
        codec_weights: DAC weights file, needed when the checkpoint's codec is a file
            ("dac-file-<digest>", checked against the file) and optional for the official one (an
            authors' checkpoint uses it: their `dac_44.1kHz_7.7kbps.pt`, or that release's name).
        device: "cpu", "cuda", or "auto".
        model_config, features: for an authors' state dict: its `TRIA(**config)` keys (default:
            inferred from the tensors) and rhythm features (default: the release preset).

    Raises:
        CheckpointError: missing/corrupt file, or a feature config inconsistent with the checkpoint.
        GenerateError: the codec cannot be had or does not match the checkpoint's `codec_id`.
    """
    device = resolve_device(device)
    checkpoint = resolve_checkpoint(checkpoint)
    if codec_weights is not None:
        codec_weights = resolve_checkpoint(codec_weights)
    ckpt = load_checkpoint(checkpoint, map_location="cpu", model_config=model_config, features=features)
    model = build_model_from_checkpoint(ckpt).to(device)
    try:
        features = RhythmFeatureConfig.from_dict(ckpt["features"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{checkpoint}: invalid rhythm-feature config: {e}") from e
    if features.config_id != ckpt["features_id"]:
        raise CheckpointError(
            f"{checkpoint}: its feature config hashes to {features.config_id}, not the recorded "
            f"features_id {ckpt['features_id']} (written by another version, or edited)")
    if features.n_bands != model.cfg.n_feats:
        raise CheckpointError(f"{checkpoint}: feature config has {features.n_bands} bands but the model "
                              f"expects {model.cfg.n_feats}")
    try:
        codec = codec_from_id(ckpt["codec_id"], None if codec_weights is None else str(codec_weights), device)
    except RuntimeError as e:  # the official weights could not be downloaded
        raise GenerateError(str(e)) from e
    except ValueError as e:
        raise GenerateError(f"codec: {e}") from e
    step = ckpt.get("train_state", {}).get("step") if isinstance(ckpt.get("train_state"), dict) else None
    return LoadedCheckpoint(Path(checkpoint), model, codec, features, ckpt["codec_id"],
                            int(step) if step is not None else None)


# ----------------------------------------------------------------------------------------------
# Generation (SPEC 6.1)


def _mono_44k(audio: np.ndarray | torch.Tensor, sample_rate: int, what: str) -> torch.Tensor:
    """(C, N) or (N,) at any rate -> (N,) float32 mono at 44.1 kHz."""
    x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio).float()
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2:
        raise AudioError("bad_shape", f"{what} must be (C, N) or (N,), got shape {tuple(x.shape)}")
    check_audio(x, what)
    if sample_rate <= 0:
        raise AudioError("bad_rate", f"{what}: sample rate must be positive, got {sample_rate}")
    return resample(x.mean(0), int(sample_rate), SAMPLE_RATE)  # (N,)


def filter_rhythm(audio: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """High-pass at 250 Hz and low-pass at 8 kHz (windowed sinc, as audiotools): (..., N) -> (..., N).

    The app's "Filter Inputs" option: it removes rumble and hiss from a tapped or beatboxed prompt
    before its rhythm features are taken.
    """
    x = julius.highpass_filter(audio, FILTER_HIGHPASS_HZ / sample_rate, zeros=FILTER_ZEROS)
    return julius.lowpass_filter(x, FILTER_LOWPASS_HZ / sample_rate, zeros=FILTER_ZEROS)


def prepare_prompts(
    rhythm: np.ndarray | torch.Tensor, rhythm_sr: int, timbre: np.ndarray | torch.Tensor, timbre_sr: int,
    duration_s: float = 6.0, prefix_s: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono 44.1 kHz prompts cut to the buffer (SPEC 6.1): timbre <= prefix_s, rhythm <= duration_s - timbre.

    Args:
        rhythm, timbre: (C, N) or (N,) at their rates.

    Returns:
        rhythm (Nr,) and timbre (Nt,) float32 at 44.1 kHz.

    Raises:
        AudioError: empty or non-finite audio. GenerateError: a prompt shorter than the minimum.
    """
    if not 0 < prefix_s < duration_s:
        raise GenerateError(f"need 0 < prefix_s < duration_s, got {prefix_s} and {duration_s}")
    timbre_44k = _mono_44k(timbre, timbre_sr, "timbre prompt")[: int(prefix_s * SAMPLE_RATE)]
    rhythm_44k = _mono_44k(rhythm, rhythm_sr, "rhythm prompt")
    rhythm_44k = rhythm_44k[: int(duration_s * SAMPLE_RATE) - timbre_44k.shape[-1]]
    n_rhythm, n_timbre = rhythm_44k.shape[-1], timbre_44k.shape[-1]
    if n_timbre < MIN_TIMBRE_S * SAMPLE_RATE:
        raise GenerateError(f"timbre prompt too short: {n_timbre / SAMPLE_RATE:.2f} s "
                            f"(at least {MIN_TIMBRE_S} s needed)")
    if n_rhythm < MIN_RHYTHM_S * SAMPLE_RATE:
        raise GenerateError(f"rhythm prompt too short: {n_rhythm / SAMPLE_RATE:.2f} s "
                            f"(at least {MIN_RHYTHM_S} s needed)")
    return rhythm_44k, timbre_44k


@torch.no_grad()
def generate_drums(
    rhythm: np.ndarray | torch.Tensor,
    rhythm_sr: int,
    timbre: np.ndarray | torch.Tensor,
    timbre_sr: int,
    model: TRIA,
    codec: Codec,
    features_cfg: RhythmFeatureConfig,
    sampler: SamplerConfig = SamplerConfig(),
    seed: int = 0,
    n_outputs: int = 1,
    duration_s: float = 6.0,
    prefix_s: float = 2.0,
    filter_inputs: bool = False,
    loudness_db: float | None = -20.0,
    callback: Callable[[DecodeStep], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Play the rhythm of `rhythm` with the drums of `timbre` (SPEC 6.1).

    Both prompts are made mono at 44.1 kHz. The timbre prompt is cut to `prefix_s` and tokenized
    on its own (the codec normalises its RMS); it is the visible prefix. The rhythm prompt is cut
    to `duration_s` minus the timbre length; its rhythm features, aligned to its Tr codec frames,
    guide Tr hidden frames after the prefix. The authors also tokenize the rhythm prompt, but those
    tokens are only placeholders that the model never reads (hidden entries are zero-embedded), so
    here the hidden region is sized from the prompt's length without running the encoder.

    Args:
        rhythm: (C, N) or (N,) rhythm prompt at `rhythm_sr`.
        timbre: (C, N) or (N,) timbre prompt at `timbre_sr`.
        model: a TRIA whose `n_feats` equals `features_cfg.n_bands`.
        codec: the codec the model's tokens came from.
        features_cfg: the model's rhythm-feature config.
        sampler: decoding settings.
        seed: output i uses seed `seed + i` (as the authors' app).
        n_outputs: number of variations, decoded in one batch.
        duration_s: length of the token buffer (prefix + generated).
        prefix_s: longest timbre prefix.
        filter_inputs: band-limit the rhythm prompt to 250 Hz - 8 kHz before its features are taken.
        loudness_db: integrated loudness of each output in LUFS, then peak-limited to 1; None keeps
            the codec's level rescaled to the rhythm prompt's RMS (what the authors' tokenizer does).
        callback: called after every decoding step (progress bars).

    Returns:
        audio (n_outputs, Tr * 512) float32 at 44.1 kHz, and an info dict with `prompt_feats`
        (F, Tr), `result_feats` (n_outputs, F, Tr), `tokens` (n_outputs, K, Tp + Tr),
        `prefix_frames` Tp, `frames` Tr, `timbre_s`, `rhythm_s`, `seeds`, `sample_rate`.

    Raises:
        AudioError: empty or non-finite prompts. GenerateError: too-short prompts, a feature
        config that does not fit the model, bad `n_outputs`/durations.
    """
    if n_outputs < 1:
        raise GenerateError(f"n_outputs must be >= 1, got {n_outputs}")
    if features_cfg.n_bands != model.cfg.n_feats:
        raise GenerateError(
            f"feature config has {features_cfg.n_bands} bands, the model expects {model.cfg.n_feats}")
    rhythm_44k, timbre_44k = prepare_prompts(rhythm, rhythm_sr, timbre, timbre_sr, duration_s, prefix_s)

    timbre_tokens = codec.encode(timbre_44k[None, None], SAMPLE_RATE)  # (1, K, Tp)
    Tr = codec.n_frames(rhythm_44k.shape[-1])
    feats_source = filter_rhythm(rhythm_44k) if filter_inputs else rhythm_44k
    prompt_feats = rhythm_features(feats_source[None, None], SAMPLE_RATE, features_cfg)  # (1, F, F')
    prompt_feats = align_features(prompt_feats, Tr)  # (1, F, Tr), nearest frame as in training

    layout = prompt_layout(timbre_tokens.expand(n_outputs, -1, -1), prompt_feats.expand(n_outputs, -1, -1))
    seeds = [seed + i for i in range(n_outputs)]
    tokens = generate(model, layout.tokens, layout.feats, layout.tokens_mask, layout.feats_mask,
                      config=sampler, seed=seeds, callback=callback)  # (n, K, Tp + Tr)
    Tp = layout.prefix_frames
    audio = codec.decode(tokens[:, :, Tp:].cpu()).float()  # (n, 1, Tr * 512): only the generated frames
    audio = _set_level(audio, rhythm_44k, loudness_db)

    result_feats = align_features(rhythm_features(audio, SAMPLE_RATE, features_cfg), Tr)  # (n, F, Tr)
    info = {
        "prompt_feats": prompt_feats[0].numpy(), "result_feats": result_feats.numpy(), "tokens": tokens.cpu(),
        "prefix_frames": Tp, "frames": Tr, "timbre_s": timbre_44k.shape[-1] / SAMPLE_RATE,
        "rhythm_s": rhythm_44k.shape[-1] / SAMPLE_RATE, "seeds": seeds, "sample_rate": SAMPLE_RATE,
        "frame_rate": SAMPLE_RATE / codec.hop_length,
    }
    return audio[:, 0].numpy().astype(np.float32), info


def _set_level(audio: torch.Tensor, rhythm: torch.Tensor, loudness_db: float | None) -> torch.Tensor:
    """(n, 1, N) -> (n, 1, N) at `loudness_db` LUFS, or at the rhythm prompt's RMS when None; peak <= 1."""
    if loudness_db is None:
        target = rms_db(rhythm.reshape(1, 1, -1))[0]  # the prompt's level, pooled over its samples
        audio = normalize_level(audio, SAMPLE_RATE, float(target), mode="rms")
    else:
        audio = normalize_level(audio, SAMPLE_RATE, loudness_db, mode="lufs")
    return peak_limit(audio, 1.0)


# ----------------------------------------------------------------------------------------------
# Pictures of the rhythm features


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def features_figure(info: dict[str, Any]):
    """A matplotlib figure: one row per band, the prompt's features and each result's on top.

    Args:
        info: the dict `generate_drums` returns.
    """
    import matplotlib

    matplotlib.use("Agg")  # files and arrays only, never a window
    import matplotlib.pyplot as plt

    prompt, results = info["prompt_feats"], info["result_feats"]  # (F, Tr), (n, F, Tr)
    n_bands = prompt.shape[0]
    t = np.arange(prompt.shape[-1]) / info["frame_rate"]
    fig, axes = plt.subplots(n_bands, 1, figsize=(9, 1.7 * n_bands + 0.6), sharex=True, squeeze=False)
    for b, ax in enumerate(axes[:, 0]):
        ax.fill_between(t, prompt[b], step="mid", color="0.75", label="rhythm prompt")
        for i, r in enumerate(results):
            ax.step(t, r[b], where="mid", lw=1.2, label=f"result {i + 1} (seed {info['seeds'][i]})")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"band {b + 1}\n({'low' if b == 0 else 'high' if b == n_bands - 1 else 'mid'})")
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=min(4, 1 + len(results)))
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle("Rhythm features: prompt vs. generated drums", fontsize=10)
    fig.tight_layout()
    return fig


def features_picture(info: dict[str, Any]) -> np.ndarray:
    """The figure of `features_figure` as an (H, W, 3) uint8 array (for the Gradio page)."""
    import matplotlib.pyplot as plt

    fig = features_figure(info)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def save_features_plot(info: dict[str, Any], path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig = features_figure(info)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ----------------------------------------------------------------------------------------------
# CLI


def _per_codebook(cast: type) -> Callable[[str], Any]:
    """argparse type: "8" -> 8, "16,8,8,8,8,8,8,8,4" -> a list (one per codebook); "none" -> None."""

    def parse(text: str):
        parts = [p.strip() for p in text.split(",")]
        try:
            vals = [None if p.lower() in ("none", "off") else cast(p) for p in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a {cast.__name__} or 9 comma-separated values, got {text!r}")
        return vals[0] if len(vals) == 1 else vals

    return parse


SAMPLER_FLAGS = {  # flag -> (SamplerConfig field, type, help)
    "--iterations": ("iterations", int, "decoding steps per codebook (default 8)"),
    "--top-p": ("top_p", float, "nucleus filtering, active for 0 < p < 1 (train preset 0.85)"),
    "--top-k": ("top_k", int, "keep the k most likely tokens; 0 or none = off"),
    "--temp": ("temp", float, "sampling temperature (1.0; 0 = argmax)"),
    "--mask-temp": ("mask_temp", float, "Gumbel noise on confidences, annealed to 0 (10.5)"),
    "--guidance-scale": ("guidance_scale", float, "classifier-free guidance weight w (2.0; 0 = off)"),
    "--causal-bias": ("causal_bias", float, "favour unmasking earlier frames first (1.0; 0 = off)"),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tria.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rhythm", required=True, type=Path,
                    help="rhythm prompt: tapping, beatboxing, any percussion")
    ap.add_argument("--timbre", required=True, type=Path,
                    help="timbre prompt: a drum recording (first 2 s used)")
    add_checkpoint_args(ap)
    ap.add_argument("--out", required=True, type=Path, help="output wav; with --n-outputs N, <out>_<i>.wav")
    ap.add_argument("--seed", type=int, default=0, help="output i uses seed + i (0)")
    ap.add_argument("--n-outputs", type=int, default=1, help="number of variations (1)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="train",
                    help="sampler defaults: train (the paper's, default), app (the authors' Gradio page), "
                         "authors (TRIA.inference signature)")
    for flag, (_, cast, text) in SAMPLER_FLAGS.items():
        ap.add_argument(flag, type=_per_codebook(cast), default=argparse.SUPPRESS,
                        help=text + "; one value or 9 comma-separated")
    ap.add_argument("--filter-inputs", action="store_true",
                    help="band-pass the rhythm prompt to 250 Hz - 8 kHz before its features are taken")
    ap.add_argument("--duration", type=float, default=6.0, help="token buffer length in seconds (6.0)")
    ap.add_argument("--loudness-db", type=float, default=-20.0, help="output loudness in LUFS (-20)")
    ap.add_argument("--plot", type=Path, help="also write a PNG of the prompt's and results' rhythm features")
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    return ap


def add_checkpoint_args(ap: argparse.ArgumentParser) -> None:
    """The checkpoint flags the CLI and the page share."""
    ap.add_argument("--checkpoint", required=True,
                    help="a TRIA checkpoint (tria-checkpoint-v1), an authors' model.pt, or an authors' release "
                         "name, downloaded once into ~/.cache/tria: " + ", ".join(n for n in RELEASES if "dac" not in n))
    ap.add_argument("--codec-weights",
                    help="DAC weights file (DAC's own format): needed when the checkpoint's codec is a file (its "
                         "digest is checked); for an authors' checkpoint their dac_44.1kHz_7.7kbps.pt (or that name)")
    ap.add_argument("--model-config", type=Path,
                    help="authors' checkpoint only: YAML/JSON of its TRIA(**config) keys (default: from the tensors)")
    ap.add_argument("--features", default=None,
                    help="authors' checkpoint only: rhythm features it was trained with: release (default), paper, "
                         "or a YAML/JSON file of RhythmFeatureConfig fields")


def checkpoint_options(args: argparse.Namespace) -> dict[str, Any]:
    """`load_for_generation` keyword arguments from `add_checkpoint_args` flags."""
    import yaml

    def read(path: Path) -> Any:
        try:
            return yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as e:
            raise CheckpointError(f"cannot read {path}: {e}") from e

    features = args.features
    if features is not None and features not in ("release", "paper"):
        features = read(Path(features))
    return {"codec_weights": args.codec_weights, "device": args.device, "features": features,
            "model_config": read(args.model_config) if args.model_config else None}


def sampler_from_args(args: argparse.Namespace) -> SamplerConfig:
    """The preset, with every sampler flag that was given replacing its field."""
    given = {field: flag[2:].replace("-", "_") for flag, (field, _, _) in SAMPLER_FLAGS.items()}
    changes = {field: getattr(args, dest) for field, dest in given.items() if hasattr(args, dest)}
    if changes.get("top_k") == 0:
        changes["top_k"] = None  # the app's convention: 0 means off
    return dataclasses.replace(PRESETS[args.preset](), **changes)


def _output_paths(out: Path, n: int) -> list[Path]:
    return [out] if n == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix or '.wav'}") for i in range(n)]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def run(args: argparse.Namespace) -> list[Path]:
    """Do what `main` says: load, generate with a progress bar, write wav(s) and the optional plot."""
    from tqdm import tqdm

    sampler = sampler_from_args(args)
    sampler.per_codebook(9)  # validates lengths and ranges before anything slow happens
    rhythm, r_sr = load_audio(args.rhythm)
    timbre, t_sr = load_audio(args.timbre)
    prepare_prompts(rhythm, r_sr, timbre, t_sr, args.duration, args.duration / 3)  # fail before the slow part
    loaded = load_for_generation(args.checkpoint, **checkpoint_options(args))
    print(f"[tria.generate] {loaded.describe()}", flush=True)
    print(f"[tria.generate] sampler ({args.preset} preset): {sampler}", flush=True)
    total = sum(v["iterations"] for v in sampler.per_codebook(loaded.model.cfg.n_codebooks))
    with tqdm(total=total, desc="decoding", unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
        def on_step(step: DecodeStep) -> None:
            bar.set_postfix_str(f"codebook {step.codebook + 1}/{loaded.model.cfg.n_codebooks}", refresh=False)
            bar.update(1)

        audio, info = generate_drums(
            rhythm, r_sr, timbre, t_sr, loaded.model, loaded.codec, loaded.features, sampler, seed=args.seed,
            n_outputs=args.n_outputs, duration_s=args.duration, prefix_s=args.duration / 3,
            filter_inputs=args.filter_inputs, loudness_db=args.loudness_db, callback=on_step)
    paths = [save_audio(p, a, SAMPLE_RATE) for p, a in zip(_output_paths(args.out, args.n_outputs), audio)]
    for p, s in zip(paths, info["seeds"]):
        print(f"[tria.generate] wrote {p} ({audio.shape[-1] / SAMPLE_RATE:.2f} s, 44.1 kHz, seed {s}; timbre "
              f"{info['timbre_s']:.2f} s, rhythm {info['rhythm_s']:.2f} s)", flush=True)
    if args.plot is not None:
        if have_matplotlib():
            print(f"[tria.generate] wrote {save_features_plot(info, args.plot)}", flush=True)
        else:
            print("[tria.generate] --plot skipped: matplotlib is not installed (pip install matplotlib)",
                  flush=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 with a one-line message for bad inputs)."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except CheckpointError as e:
        print(f"error: checkpoint: {_one_line(e)}", file=sys.stderr)
        return 2
    except AudioError as e:
        print(f"error: audio: {_one_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # GenerateError, codec mismatch, bad sampler values: all named in the message
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
