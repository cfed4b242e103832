"""Build the embedded demo corpus: drum loops rendered from real kits, plus rhythm gestures.

    python -m pipelines.demo.build data/demo            # ~4 min of loops, 6 gestures
    python -m pipelines.demo.build data/demo --no-apt   # procedural kits only

With apt available, the kits are Debian's `hydrogen-data` and `hydrogen-drumkits` (16 real
multi-sampled kits, fetched with `apt-get download`, no root). Without it the corpus falls
back to procedural kits; the log line and `manifest["source"]` say which one was used.

Layout under `out_dir`::

    loops/<kit>/<index>_<genre>_<bpm>bpm.wav   stereo 44.1 kHz, 16-bit
    gestures/<index>_<style>_<genre>.wav         the grooves of the first loops, as gestures
    manifest.json                                 one entry per file (path, kit, licence, ...)

Deterministic: the same arguments give byte-identical wavs (every random draw comes from
`SeedSequence([seed, loop index])`, kits are sorted by name). Cached: a second call with
the same arguments finds the manifest and its files, and does nothing (so a corpus made by
the procedural fallback stays until its manifest.json is deleted or the arguments change).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from pipelines.demo import debs
from pipelines.demo.gestures import STYLES, render_gesture
from pipelines.demo.grooves import GENRES, Groove, generate_groove, song_groove
from pipelines.demo.kits import Kit, Song, load_kits, parse_h2song
from pipelines.demo.render import RenderedLoop, render_events
from pipelines.demo.synth import procedural_kits

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SOURCE_HYDROGEN = "hydrogen"
SOURCE_PROCEDURAL = "procedural"


def default_cache_dir() -> Path:
    """Where the Debian packages are cached: `$XDG_CACHE_HOME/tria/hydrogen`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tria" / "hydrogen"


def kit_slug(name: str) -> str:
    """A folder name for a kit ("The Black Pearl 1.0" -> "The_Black_Pearl_1.0")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "kit"


def _real_kits(cache_dir: Path) -> tuple[list[Kit], dict[str, list[Song]], dict[str, Any]]:
    """Fetch (cached) and parse the Hydrogen kits; songs are grouped by the kit they name."""
    tree = debs.fetch_hydrogen(cache_dir)
    kits, errors = load_kits(tree.kit_dirs, tree.copyright_files)
    for name, err in errors.items():
        log.warning("kit %s did not parse: %s", name, err)
    kits = [k for k in kits if k.can_play_grooves]
    songs: dict[str, list[Song]] = {}
    for path in tree.song_files:
        try:
            song = parse_h2song(path)
        except ValueError as exc:
            log.warning("song %s did not parse: %s", path.name, exc)
            continue
        if song.drumkit:
            songs.setdefault(song.drumkit, []).append(song)
    info = {"fetch_seconds": round(tree.seconds, 2), "packages": list(debs.HYDROGEN_PACKAGES)}
    return kits, songs, info


def resolve_kits(use_apt: bool, cache_dir: Path) -> tuple[str, list[Kit], dict[str, list[Song]], dict]:
    """Real Hydrogen kits when `use_apt` and apt works, else the procedural kits.

    The procedural kits are always synthesised with seed 0: like Debian's, they are fixed
    instruments, and the corpus seed varies what they play.

    Returns:
        (source, kits sorted by name, songs by kit name, info for the manifest).
    """
    if use_apt:
        try:
            kits, songs, info = _real_kits(cache_dir)
            if kits:
                return SOURCE_HYDROGEN, kits, songs, info
            log.warning("no playable kit in the Hydrogen packages")
        except (debs.DebError, OSError, ValueError) as exc:
            log.warning("Hydrogen kits unavailable (%s); using procedural kits", exc)
    return SOURCE_PROCEDURAL, procedural_kits(0), {}, {}


def _plan_groove(index: int, first_for_kit: bool, songs: list[Song], seconds: float, seed: int) -> Groove:
    """The groove of loop `index`: a kit's own demo song for its first loop (and now and then
    later), else a generated groove of a seeded genre."""
    rng = np.random.default_rng([seed, index])
    sub_seed = int(rng.integers(2**31))
    if songs and (first_for_kit or rng.random() < 0.25):
        song = songs[int(rng.integers(len(songs)))]
        groups = max(len(song.sequence), 1)
        return song_groove(song, seconds, start_group=int(rng.integers(groups)), seed=sub_seed)
    # Genres take turns (in a seeded order) so that every genre is in even a small corpus.
    genres = [sorted(GENRES)[i] for i in np.random.default_rng([seed, 0x6E]).permutation(len(GENRES))]
    genre = genres[index % len(genres)]
    return generate_groove(genre, seconds, seed=sub_seed, fill_every=int(rng.choice([2, 4])))


def _write_wav(path: Path, loop: RenderedLoop) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), loop.audio.T, loop.sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)  # atomic: a crash never leaves a truncated wav under the final name


def _entry(path: Path, out_dir: Path, kind: str, loop: RenderedLoop, groove: Groove, seed: int) -> dict:
    return {
        "path": path.relative_to(out_dir).as_posix(),
        "kind": kind,
        "kit": loop.kit,
        "licence": loop.licence,
        "tier": loop.tier,
        "bpm": groove.bpm,
        "genre": groove.genre,
        "duration": round(loop.seconds, 6),
        "sample_rate": loop.sample_rate,
        "seed": seed,
        "n_events": len(groove.events),
        "instruments": loop.instruments,
    }


def _read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _kit_entry(kit: Kit, loops: list[dict]) -> dict[str, Any]:
    n_loops = sum(i["kit"] == kit.name for i in loops)
    return {"name": kit.name, "author": kit.author, "licence": kit.licence, "n_samples": kit.n_samples,
            "n_loops": n_loops}  # fmt: skip


def _cached(out_dir: Path, config: dict, manifest: dict | None) -> dict | None:
    if manifest is None or manifest.get("config") != config:
        return None
    if not all((out_dir / item["path"]).is_file() for item in manifest.get("items", [])):
        return None
    return manifest


def _remove_stale(out_dir: Path, previous: dict | None, keep: set[str]) -> None:
    """Delete files of an earlier build (other arguments) that the new manifest does not list."""
    for item in (previous or {}).get("items", []):
        if item.get("path") not in keep:
            (out_dir / item["path"]).unlink(missing_ok=True)


def _render_loops(
    out_dir: Path, kits: list[Kit], songs: dict[str, list[Song]], n_loops: int, seconds: float, seed: int
) -> tuple[list[dict], list[Groove]]:
    order = np.random.default_rng([seed, 0xC0FFEE]).permutation(len(kits))
    items, grooves = [], []
    for index in range(n_loops):
        kit = kits[int(order[index % len(kits)])]  # round robin over a seeded order
        groove = _plan_groove(index, index < len(kits), songs.get(kit.name, []), seconds, seed)
        loop_seed = int(np.random.default_rng([seed, index, 1]).integers(2**31))
        loop = render_events(groove.events, kit, seconds, seed=loop_seed)
        genre = kit_slug(groove.genre.replace("h2song:", "song-"))
        path = out_dir / "loops" / kit_slug(kit.name) / f"{index:03d}_{genre}_{round(groove.bpm)}bpm.wav"
        _write_wav(path, loop)
        items.append(_entry(path, out_dir, "loop", loop, groove, loop_seed))
        grooves.append(groove)
    return items, grooves


def _render_gestures(
    out_dir: Path, loops: list[dict], grooves: list[Groove], n: int, seed: int
) -> list[dict]:
    items = []
    for index in range(min(n, len(grooves))):
        style = STYLES[index % len(STYLES)]
        loop = render_gesture(grooves[index], style, seed=seed + index)
        genre = kit_slug(grooves[index].genre.replace("h2song:", "song-"))
        path = out_dir / "gestures" / f"{index:03d}_{style}_{genre}.wav"
        _write_wav(path, loop)
        entry = _entry(path, out_dir, "gesture", loop, grooves[index], seed + index)
        entry["style"] = style
        entry["groove_of"] = loops[index]["path"]  # the drum loop that plays the same rhythm
        items.append(entry)
    return items


def build_demo_corpus(
    out_dir: str | Path,
    n_loops: int = 36,
    seconds_per_loop: float = 7.0,
    seed: int = 0,
    use_apt: bool = True,
    n_gestures: int = 6,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Render the demo corpus (cached) and return its manifest.

    Args:
        out_dir: where loops/, gestures/ and manifest.json go.
        n_loops: number of drum loops (36 x 7 s is about 4 minutes).
        seconds_per_loop: length of each loop and gesture.
        seed: everything random derives from it.
        use_apt: try Debian's Hydrogen kits first (False: procedural kits only).
        n_gestures: gestures rendered from the first loops' grooves (at most n_loops).
        cache_dir: where the .deb files and their unpacked tree are kept.

    Returns:
        The manifest: {"version", "source", "config", "kits", "items", "total_seconds", ...}.

    Raises:
        ValueError: n_loops < 1, n_gestures < 0, or seconds_per_loop not positive.
    """
    if n_loops < 1 or n_gestures < 0 or not seconds_per_loop > 0:
        raise ValueError(
            f"need n_loops >= 1, n_gestures >= 0, seconds_per_loop > 0; "
            f"got {n_loops}, {n_gestures}, {seconds_per_loop}"
        )
    out_dir = Path(out_dir)
    config = {"n_loops": n_loops, "seconds_per_loop": float(seconds_per_loop), "seed": seed,
              "use_apt": use_apt, "n_gestures": n_gestures, "version": MANIFEST_VERSION}  # fmt: skip
    previous = _read_manifest(out_dir)
    cached = _cached(out_dir, config, previous)
    if cached is not None:
        log.info("demo corpus in %s is up to date (%s kits); nothing to do", out_dir, cached["source"])
        return cached
    start = time.perf_counter()
    source, kits, songs, info = resolve_kits(use_apt, Path(cache_dir or default_cache_dir()))
    loops, grooves = _render_loops(out_dir, kits, songs, n_loops, float(seconds_per_loop), seed)
    gestures = _render_gestures(out_dir, loops, grooves, n_gestures, seed)
    items = loops + gestures
    used = {i["kit"] for i in loops}
    manifest = {
        "version": MANIFEST_VERSION,
        "source": source,
        "config": config,
        "kits": [_kit_entry(k, loops) for k in kits if k.name in used],
        "items": items,
        "total_seconds": round(sum(i["duration"] for i in items), 3),
        "build_seconds": round(time.perf_counter() - start, 2),
        **info,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out_dir / MANIFEST)  # written last: its presence means the corpus is complete
    _remove_stale(out_dir, previous, {i["path"] for i in items})
    if source == SOURCE_HYDROGEN:
        what = f"{len(used)} real Hydrogen kits (Debian {' + '.join(debs.HYDROGEN_PACKAGES)})"
    else:
        why = "fallback: Hydrogen kits unavailable" if use_apt else "use_apt=False"
        what = f"{len(used)} PROCEDURAL kits ({why})"
    minutes = manifest["total_seconds"] / 60
    print(
        f"demo corpus: {len(loops)} loops from {what}, {len(gestures)} gestures, {minutes:.1f} min in {out_dir}"
    )
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: build the demo corpus into a folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--n-loops", type=int, default=36)
    parser.add_argument("--seconds", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-gestures", type=int, default=6)
    parser.add_argument("--no-apt", action="store_true", help="procedural kits only")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_demo_corpus(args.out_dir, args.n_loops, args.seconds, args.seed, not args.no_apt, args.n_gestures,
                      args.cache_dir)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
