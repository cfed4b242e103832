"""SIMULATED separated drums for the demo: Hydrogen loops mixed with music, then "separated".

    get_source("hydrogen_simsep")                       # 12 loops of the demo corpus
    get_source("hydrogen_simsep", n_loops=4, bleed=0.3)

The demo's `separated` tier, for the curriculum experiments (``conf/pipeline/demo_curriculum.yaml``).
It reads the demo corpus that the ``hydrogen`` source renders (``<data>/raw/hydrogen/demo``, built
here when missing), mixes ``n_loops`` of its loops with procedural music and degrades them the way
mask-based separation degrades drums (``pipelines.demo.separation``: bleed, smeared transients,
dulled highs, musical noise). Each loop keeps the split of the loop it came from (no leak between
splits), and its stem row names that loop's stem as parent.

Every row says it is simulated: the source title and description, the licence ("... ; SIMULATED
separation") and the track names (``simsep/<kit>/<loop>``). It is not Demucs output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from pipelines.demo.build import MANIFEST, build_demo_corpus
from pipelines.demo.separation import SeparationArtefacts, accompaniment, simulate_separation
from pipelines.rows import stable_id, to_json
from pipelines.sources.base import (
    Consolidated,
    RawFileRow,
    Source,
    SourceInfo,
    TrackRow,
    link_or_copy,
    probe_stem,
    sha256_file,
    stem_path,
)
from pipelines.sources.hydrogen import Hydrogen, assign_splits

STEM = "drums"
PREFIX = "simsep"
SIM_MANIFEST = "simsep.json"


class HydrogenSimSeparated(Source):
    """Demo loops through a simulated separation (tier ``separated``, labelled simulated).

    Args:
        location: the demo corpus folder (default: the ``hydrogen`` source's, beside this raw folder).
        n_loops: how many loops get a simulated separated version (spread over kits by a hash).
        seed: seed of the music and the mask noise.
        artefacts: ``SeparationArtefacts`` fields (bleed, smear_ms, highcut_hz, ...).
    """

    info = SourceInfo(
        name="hydrogen_simsep",
        title="SIMULATED separated drums (demo): Hydrogen loops mixed with music, degraded like separation",
        licence="per kit (as hydrogen); SIMULATED separation",
        tier="separated",
        role="drums",
        homepage="http://www.hydrogen-music.org",
        description="NOT real source separation. Demo loops (source hydrogen) mixed with procedural music "
        "(bass, chords, arpeggio) and passed through a degraded ratio mask: bleed of the music, transients "
        "smeared over ~60 ms, highs rolled off above 7 kHz, musical noise. Stands in for Demucs output in "
        "the curriculum demo, where Demucs weights are not available.",
    )

    def __init__(self, location: str | os.PathLike | None = None, n_loops: int = 12, seed: int = 0,
                 artefacts: dict | None = None, **options: Any) -> None:
        super().__init__(location=location, **options)
        self.n_loops, self.seed = int(n_loops), int(seed)
        self.artefacts = SeparationArtefacts(**(artefacts or {}))

    def corpus_dir(self, raw_dir: str | os.PathLike) -> Path:
        return self.location if self.location is not None else Path(raw_dir).parent / "hydrogen" / "demo"

    def _settings(self) -> dict[str, Any]:
        return {"n_loops": self.n_loops, "seed": self.seed, "artefacts": dataclasses.asdict(self.artefacts)}

    def _chosen(self, corpus: Path) -> list[dict[str, Any]]:
        """The loops to degrade: the first ``n_loops`` in hash order (spread over kits, stable)."""
        manifest = json.loads((corpus / MANIFEST).read_text())
        loops = [i for i in manifest.get("items", []) if i.get("kind") == "loop"]
        loops.sort(key=lambda i: hashlib.sha1(f"{self.seed}|{i['path']}".encode()).hexdigest())
        return loops[: self.n_loops]

    def fetch(self, dest_dir: str | os.PathLike, **download_options: Any) -> list[RawFileRow]:
        """Render the simulated separated loops into ``dest_dir`` (cached while the settings match)."""
        dest = Path(dest_dir)
        corpus = self.corpus_dir(dest)
        if self.location is None and not (corpus / MANIFEST).exists():
            build_demo_corpus(corpus)  # the hydrogen source's defaults
        settings_path = dest / SIM_MANIFEST
        fresh = settings_path.exists() and json.loads(settings_path.read_text()) == self._settings()
        rows = []
        for k, item in enumerate(self._chosen(corpus)):
            out = dest / "loops" / item["path"].split("/", 1)[-1]
            if not (fresh and out.exists()):
                drums, sr = sf.read(corpus / item["path"], always_2d=True)
                rng = np.random.default_rng([self.seed, k])
                music = accompaniment(drums.shape[0], float(item["bpm"]), rng, sr)
                est, _ = simulate_separation(drums, music, self.artefacts, rng, sr)
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(out.stem + ".partial.wav")
                sf.write(tmp, est, sr, subtype="PCM_16")
                os.replace(tmp, out)
            rows.append(RawFileRow(source=self.name, name=out.relative_to(dest).as_posix(), path=str(out),
                                   size=out.stat().st_size, sha256=sha256_file(out)))
        dest.mkdir(parents=True, exist_ok=True)
        settings_path.write_text(json.dumps(self._settings()))
        return rows

    def consolidate(self, raw_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Consolidated:
        """One track and one ``separated`` drum stem per degraded loop, in its original loop's split."""
        raw = Path(raw_dir)
        corpus = self.corpus_dir(raw)
        manifest = json.loads((corpus / MANIFEST).read_text())
        all_loops = [i for i in manifest.get("items", []) if i.get("kind") == "loop"]
        splits = assign_splits([Hydrogen.track_name(i) for i in all_loops], salt="hydrogen")
        tracks, stems = [], []
        for item in self._chosen(corpus):
            original = Hydrogen.track_name(item)
            name = item["path"].split("/", 1)[-1]
            src = raw / "loops" / name
            track, split = f"{PREFIX}/{original}", splits[original]
            licence = f"{item['licence']}; SIMULATED separation"
            dest = link_or_copy(src, stem_path(out_dir, split, track, STEM))
            stems.append(probe_stem(self.name, track, STEM, "drums", "separated", split, licence, dest,
                                    raw_ids=(self.raw_id(f"loops/{name}"),),
                                    parent_stem_id=stable_id("hydrogen", original, STEM)))
            meta = {"simulated": True, "from_track": original, **self._settings(),
                    **{k: item.get(k) for k in ("kit", "genre", "bpm")}}
            tracks.append(TrackRow(self.name, track, split, licence, float(item["duration"]),
                                   f"SIMULATED separation of {item['kit']} {item['genre']}", to_json(meta)))
        return Consolidated(tracks=tuple(tracks), stems=tuple(stems))


__all__ = ["HydrogenSimSeparated"]
