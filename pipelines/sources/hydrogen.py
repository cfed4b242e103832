"""Hydrogen drum kits, rendered into loops: the embedded demo corpus as a catalogue source.

    get_source("hydrogen")                                 # 36 loops x 7 s, real kits if apt works
    get_source("hydrogen", n_loops=4, use_apt=False)       # procedural kits only

`fetch` builds the demo corpus (`pipelines.demo.build.build_demo_corpus`) in the raw folder:
Debian's `hydrogen-data` and `hydrogen-drumkits` are fetched with `apt-get download` (no
root), unpacked in Python, and their kits play seeded grooves; without apt, procedural kits
do. Every rendered loop is a raw file. `consolidate` links each loop into the common layout
as one track with one `drums` stem, tier `synthetic`, licence from its kit (GPL-2, CC0,
CC-BY-3.0, CC-BY-SA-3.0 ... per kit, or "CC0 (procedural)").

The split is a hash of kit and loop name (80/10/10 by default), so adding loops never moves
one; a corpus whose hashes give no validation loop gets one anyway (the train loop with the
smallest hash moves to `val`), because the demo must always have something to validate on.
The gestures (rhythm prompts) are not drum stems and are left out.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.demo.build import MANIFEST, build_demo_corpus
from pipelines.rows import to_json
from pipelines.sources.base import (
    Consolidated,
    RawFileRow,
    RemoteFile,
    Source,
    SourceInfo,
    TrackRow,
    hash_split,
    link_or_copy,
    probe_stem,
    sha256_file,
    stem_path,
)

STEM = "drums"


def _hash_key(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def assign_splits(
    keys: Sequence[str], ratios: Sequence[float] = (0.8, 0.1, 0.1), salt: str = "hydrogen"
) -> dict[str, str]:
    """Hash split of `keys`, with at least one `val` key whenever there are two or more keys.

    Args:
        keys: item keys (kit and loop name).
        ratios: train/val/test fractions.
        salt: prefix of the hashed string (the source name).

    Returns:
        {key: "train" | "val" | "test"}.
    """
    splits = {k: hash_split(f"{salt}|{k}", ratios) for k in keys}
    if len(splits) >= 2 and "val" not in splits.values():
        # Take from the biggest split, so train keeps most of the data.
        donor = max(("train", "test"), key=lambda s: sum(v == s for v in splits.values()))
        chosen = min((k for k, v in splits.items() if v == donor), key=lambda k: _hash_key(f"{salt}|{k}"))
        splits[chosen] = "val"
    return splits


class Hydrogen(Source):
    """Loops rendered from Hydrogen drum kits (the embedded demo corpus).

    Args:
        files, location, split_ratios: as `Source`; `location` may name an already built
            corpus folder (one holding `manifest.json`), used in place.
        n_loops: number of loops to render.
        seconds_per_loop: loop length.
        seed: seed of the corpus.
        use_apt: try Debian's Hydrogen kits (False: procedural kits only).
        n_gestures: rhythm-prompt gestures rendered beside the loops (not stems).
        cache_dir: where the .deb files are kept (default `~/.cache/tria/hydrogen`).
    """

    info = SourceInfo(
        name="hydrogen",
        title="Hydrogen drum kits (rendered demo loops)",
        licence="per kit: GPL-2, GPL-2+, CC0, CC-BY-3.0, CC-BY-SA-3.0",
        tier="synthetic",
        role="drums",
        homepage="http://www.hydrogen-music.org",
        description="Debian's hydrogen-data and hydrogen-drumkits (16 multi-sampled kits) render "
        "seeded grooves (rock, funk, hip-hop, house, half-time, shuffle) and the kits' demo songs into "
        "stereo 44.1 kHz loops; procedural kits stand in when apt is unavailable.",
    )

    SPLIT_MODES = ("hash",)  # no "authors" split: the authors never used this corpus

    def __init__(
        self,
        files: Sequence[RemoteFile] = (),
        location: str | os.PathLike | None = None,
        split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
        n_loops: int = 36,
        seconds_per_loop: float = 7.0,
        seed: int = 0,
        use_apt: bool = True,
        n_gestures: int = 6,
        cache_dir: str | os.PathLike | None = None,
        **options: Any,
    ) -> None:
        super().__init__(files=files, location=location, split_ratios=split_ratios, **options)
        if options:
            raise ValueError(f"hydrogen: unknown options {sorted(options)}")
        self.n_loops = int(n_loops)
        self.seconds_per_loop = float(seconds_per_loop)
        self.seed = int(seed)
        self.use_apt = bool(use_apt)
        self.n_gestures = int(n_gestures)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None

    def corpus_dir(self, raw_dir: str | os.PathLike) -> Path:
        """The folder holding the rendered corpus: `location` if given, else `raw_dir/demo`."""
        return self.location if self.location is not None else Path(raw_dir) / "demo"

    def fetch(self, dest_dir: str | os.PathLike, **download_options: Any) -> list[RawFileRow]:
        """Build (or find, cached) the demo corpus and list its loops as raw files."""
        corpus = self.corpus_dir(dest_dir)
        if self.location is None:
            build_demo_corpus(corpus, n_loops=self.n_loops, seconds_per_loop=self.seconds_per_loop,
                              seed=self.seed, use_apt=self.use_apt, n_gestures=self.n_gestures,
                              cache_dir=self.cache_dir)  # fmt: skip
        rows = []
        for item in self._loops(corpus):
            path = corpus / item["path"]
            rows.append(RawFileRow(source=self.name, name=item["path"], path=str(path),
                                   size=path.stat().st_size, sha256=sha256_file(path)))  # fmt: skip
        return rows

    def _loops(self, corpus: Path) -> list[dict[str, Any]]:
        try:
            manifest = json.loads((corpus / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"hydrogen: no readable {MANIFEST} in {corpus}; run fetch first ({exc})"
            ) from exc
        return [item for item in manifest.get("items", []) if item.get("kind") == "loop"]

    @staticmethod
    def track_name(item: dict[str, Any]) -> str:
        """Track name of a loop: kit and file name ("GMRockKit/005_rock_115bpm")."""
        return f"{item['kit']}/{Path(item['path']).stem}"

    def consolidate(self, raw_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Consolidated:
        """Link every loop to `out_dir/<split>/<track>/drums.wav`; one track and stem row each."""
        corpus = self.corpus_dir(raw_dir)
        loops = self._loops(corpus)
        splits = assign_splits([self.track_name(i) for i in loops], self.split_ratios, self.name)
        tracks, stems = [], []
        for item in loops:
            track = self.track_name(item)
            split = splits[track]
            dest = link_or_copy(corpus / item["path"], stem_path(out_dir, split, track, STEM))
            licence, raw_id = item["licence"], self.raw_id(item["path"])
            stems.append(
                probe_stem(
                    self.name, track, STEM, "drums", "synthetic", split, licence, dest, raw_ids=(raw_id,)
                )
            )
            meta = {k: item.get(k) for k in ("kit", "genre", "bpm", "seed", "instruments")}
            title = f"{item['kit']} {item['genre']}"
            duration = float(item["duration"])
            tracks.append(TrackRow(self.name, track, split, licence, duration, title, to_json(meta)))
        return Consolidated(tracks=tuple(tracks), stems=tuple(stems))


__all__ = ["Hydrogen", "assign_splits"]
