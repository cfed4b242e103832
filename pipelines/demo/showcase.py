"""The demo's last step: drums for two rhythm gestures with two kits, plus a picture of the features.

    python -m pipelines.demo.showcase --checkpoint runs/demo/demo/checkpoints/latest.pt \\
        --corpus data/demo/raw/hydrogen --catalogue data/demo/catalogue.duckdb --out demo_out

Timbre prompts are loops of two different kits from the catalogue's held-out splits (val, then test,
then train); rhythm prompts are the corpus' gestures (clicks, claps, mouth-like bursts, knocks). A
second run with the same checkpoint reuses the wavs it finds.

For every output it prints the evaluation harness's onset F1 (tria.metrics) against its own rhythm
prompt, and, as a control, against another showcase prompt (the next gesture): a model that follows
its prompt scores clearly higher on its own. The scores are kept in ``<out>/scores.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

import tria  # noqa: F401
from tria.audio import load_audio, save_audio
from tria.checkpoint import load_checkpoint

SR = 44_100


def is_trained(ckpt: Path, config: Path) -> bool:
    """True when ``ckpt`` exists and reached the config's ``num_iters``."""
    from tria.train import load_train_config

    if not ckpt.is_file():
        return False
    target = load_train_config(str(config), []).num_iters
    try:
        step = int(load_checkpoint(ckpt)["train_state"]["step"])
    except Exception:
        return False
    return step >= target


def pick_timbres(catalogue: Path, n: int = 2) -> list[dict]:
    """Loops of ``n`` different kits, preferring held-out splits."""
    from pipelines.catalogue import Catalogue

    with Catalogue(catalogue, read_only=True) as cat:
        rows = cat.execute(
            "SELECT s.path, s.split, t.title, t.meta_json FROM stems s JOIN tracks t ON t.track_id = s.track_id "
            "WHERE s.source = 'hydrogen' AND s.role = 'drums' "
            "ORDER BY CASE s.split WHEN 'val' THEN 0 WHEN 'test' THEN 1 ELSE 2 END, s.path").dicts()
    chosen, kits = [], set()
    for r in rows:
        kit = json.loads(r["meta_json"] or "{}").get("kit") or Path(r["path"]).parent.parent.name
        if kit not in kits:
            kits.add(kit)
            chosen.append({"path": r["path"], "kit": kit, "split": r["split"]})
        if len(chosen) == n:
            break
    if len(chosen) < n:
        raise SystemExit(f"the catalogue {catalogue} has fewer than {n} Hydrogen kits; run the demo pipeline first")
    return chosen


def pick_gestures(corpus: Path, n: int = 2) -> list[Path]:
    manifest = json.loads((corpus / "manifest.json").read_text())
    gestures = [corpus / item["path"] for item in manifest["items"] if item.get("kind") == "gesture"]
    styles, out = set(), []
    for g in gestures:  # different styles first (e.g. beatbox, tapping)
        style = g.stem.split("_")[1] if "_" in g.stem else g.stem
        if style not in styles:
            styles.add(style)
            out.append(g)
    out += [g for g in gestures if g not in out]
    if len(out) < n:
        raise SystemExit(f"{corpus} has fewer than {n} gestures")
    return out[:n]


def rhythm_scores(outputs: list[dict]) -> list[dict]:
    """Onset F1 of each output against its own rhythm prompt and against the next output's (control).

    ``outputs``: dicts with ``name``, ``prompt`` (its rhythm prompt, (N,) at 44.1 kHz, cut to the
    output's length) and ``audio`` ((N,) at 44.1 kHz). Needs prompts of at least two gestures.
    """
    from tria.metrics import detect_onsets, onset_f1

    prompts = {o["gesture"]: o["prompt"] for o in outputs}
    order = sorted(prompts)
    if len(order) < 2:
        raise ValueError("the control needs at least two different rhythm prompts")
    rows = []
    for o in outputs:
        other = order[(order.index(o["gesture"]) + 1) % len(order)]
        est = detect_onsets(o["audio"], SR)
        n = len(o["audio"])
        own = onset_f1(detect_onsets(o["prompt"][:n], SR), est).f1
        control = onset_f1(detect_onsets(prompts[other][:n], SR), est).f1
        rows.append({"name": o["name"], "own_prompt_f1": round(own, 4), "control_prompt": other,
                     "control_f1": round(control, 4)})
    return rows


def print_scores(rows: list[dict]) -> None:
    print("  rhythm adherence (onset F1, tria.metrics): output vs its own rhythm prompt | vs another prompt")
    for r in rows:
        print(f"    {r['name']:<48} own {r['own_prompt_f1']:.3f} | control {r['control_f1']:.3f}")
    own = float(np.mean([r["own_prompt_f1"] for r in rows]))
    control = float(np.mean([r["control_f1"] for r in rows]))
    print(f"    mean: own {own:.3f}, control {control:.3f} (difference {own - control:+.3f})")


def plot(rows: list[tuple[str, np.ndarray, np.ndarray]], path: Path, hop_s: float) -> Path:
    """One row per generation: rhythm features of the prompt (top) and of the result (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 2, figsize=(12, 2.2 * len(rows)), squeeze=False)
    for i, (title, prompt, result) in enumerate(rows):
        for j, (name, f) in enumerate((("rhythm prompt", prompt), ("generated drums", result))):
            ax = axes[i, j]
            ax.imshow(f, aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1,
                      extent=(0, f.shape[1] * hop_s, -0.5, f.shape[0] - 0.5))
            ax.set_title(f"{title}: {name}", fontsize=9)
            ax.set_yticks(range(f.shape[0]), [f"band {b}" for b in range(f.shape[0])], fontsize=7)
            ax.set_xlabel("s", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_showcase(checkpoint: Path, out: Path, timbres: list[dict], gestures: list[Path], seed: int = 0,
                 title: str = "") -> list[dict]:
    """Generate every gesture x kit with ``checkpoint`` into ``out``; write the wavs, the picture and
    ``scores.json``; print and return the scores. A second call with the same checkpoint reuses them."""
    from tria.generate import generate_drums, load_for_generation
    from tria.sampling import SamplerConfig

    stamp = hashlib.sha1(checkpoint.read_bytes()).hexdigest()[:12]
    done = out / ".checkpoint"
    names = [f"{g.stem}__{t['kit'].replace(' ', '_')}" for g in gestures for t in timbres]
    scores_path = out / "scores.json"
    if title:
        print(f"  {title} ({checkpoint})")
    if done.exists() and done.read_text() == stamp and scores_path.exists() \
            and all((out / f"{n}.wav").exists() for n in names):
        print(f"  reusing the generated drums in {out} (same checkpoint)")
        scores = json.loads(scores_path.read_text())
        print_scores(scores)
        return scores

    loaded = load_for_generation(checkpoint)  # model, its codec and feature config, checked together
    sampler = SamplerConfig.app()
    rows, outputs = [], []
    frame_s = 1.0
    for g in gestures:
        rhythm, _ = load_audio(g, sample_rate=SR)
        save_audio(out / "prompts" / f"{g.stem}.wav", rhythm, SR)
        for t in timbres:
            timbre, _ = load_audio(t["path"], sample_rate=SR)
            save_audio(out / "prompts" / f"kit_{t['kit'].replace(' ', '_')}.wav", timbre[:, : 2 * SR], SR)
            audio, info = generate_drums(rhythm, SR, timbre, SR, loaded.model, loaded.codec, loaded.features,
                                         sampler, seed=seed)
            name = f"{g.stem}__{t['kit'].replace(' ', '_')}"
            path = save_audio(out / f"{name}.wav", audio[0], SR)
            # the features generation used (prompt) and those of its output, both on the codec's frames
            rows.append((f"{g.stem} x {t['kit']}", info["prompt_feats"], info["result_feats"][0]))
            frame_s = 1.0 / info["frame_rate"]
            outputs.append({"name": name, "gesture": g.stem, "prompt": rhythm[0], "audio": audio[0]})
            print(f"  {path}  ({audio.shape[-1] / SR:.1f} s; rhythm {g.name}, kit {t['kit']})")
    png = plot(rows, out / "rhythm_features.png", frame_s)
    print(f"  {png}")
    scores = rhythm_scores(outputs)
    scores_path.write_text(json.dumps(scores, indent=1))
    print_scores(scores)
    done.write_text(stamp)
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.demo.showcase", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-trained", nargs=2, metavar=("CKPT", "CONFIG"),
                    help="exit 0 if CKPT reached CONFIG's num_iters, else 1")
    ap.add_argument("--checkpoint", type=Path, help="the checkpoint to generate with (written to --out)")
    ap.add_argument("--also", type=Path, metavar="CKPT",
                    help="a second checkpoint, generated into <out>/<--also-name>/ and scored the same way")
    ap.add_argument("--also-name", default="this_run")
    ap.add_argument("--corpus", type=Path, help="the rendered Hydrogen corpus (with manifest.json)")
    ap.add_argument("--catalogue", type=Path)
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.check_trained:
        return 0 if is_trained(Path(args.check_trained[0]), Path(args.check_trained[1])) else 1
    if not (args.checkpoint and args.corpus and args.catalogue):
        ap.error("--checkpoint, --corpus and --catalogue are required")
    timbres, gestures = pick_timbres(args.catalogue), pick_gestures(args.corpus)
    run_showcase(args.checkpoint, args.out, timbres, gestures, args.seed, "")
    if args.also:
        print()
        run_showcase(args.also, args.out / args.also_name, timbres, gestures, args.seed, "the same with --also")
    return 0


if __name__ == "__main__":
    sys.exit(main())
