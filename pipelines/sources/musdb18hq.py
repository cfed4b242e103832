"""MUSDB18-HQ: 150 songs as uncompressed stems (Zenodo record 3338373, `musdb18hq.zip`).

Layout of the archive: `train/<Artist - Title>/{mixture,drums,bass,other,vocals}.wav` and the same
under `test/` (100 + 50 tracks, 44.1 kHz stereo WAV). The drum stem is a real isolated recording,
so its tier is "isolated". The mixture can be kept too (`stems: [drums, mixture]`), as a "mix"
stem whose drums would come from Demucs ("separated").

Splits (`split_mode`):
* "official" (default): the archive's train/test folders, with the 14 tracks that the `musdb`
  package lists as `validation_tracks` (sigsep-mus-db, `musdb/configs/mus.yaml`) moved from
  train to val: train 86 / val 14 / test 50.
* "authors": the authors' manifests (`scripts/setup/create_manifests.py`): all 150 tracks pooled,
  their `mixture.wav` paths sorted and permuted with seed 0 (`base.authors_split`): 120/15/15.
  Their configs train on train + test and validate on val (`train_on: [train, test]`).
* "hash": pooled, 80/10/10 by a hash of the track name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from pipelines.sources.base import (
    Consolidated,
    RejectRow,
    RemoteFile,
    Source,
    SourceInfo,
    TrackRow,
    link_or_copy,
    probe_stem,
    stem_path,
)

OFFICIAL_SPLITS = ("train", "test")
# musdb's validation tracks (sigsep-mus-db, musdb/configs/mus.yaml: `validation_tracks`), all in train/.
VALIDATION_TRACKS = frozenset({
    "Actions - One Minute Smile", "Clara Berry And Wooldog - Waltz For My Victims",
    "Johnny Lokke - Promises & Lies", "Patrick Talbot - A Reason To Leave", "Triviul - Angelsaint",
    "Alexander Ross - Goodbye Bolero", "Fergessen - Nos Palpitants", "Leaf - Summerghost",
    "Skelpolu - Human Mistakes", "Young Griffo - Pennies", "ANiMAL - Rockshow", "James May - On The Line",
    "Meaxic - Take A Step", "Traffic Experiment - Sirens",
})
# stem file name in the archive -> (stem name in our layout, role, tier)
KEEPABLE = {"drums": ("drums", "drums", "isolated"), "mixture": ("mix", "mix", "separated")}


class MUSDB18HQ(Source):
    """MUSDB18-HQ adapter.

    Args:
        stems: which archive stems to keep: "drums" and/or "mixture".
        split_mode: "official" (train/val/test as the musdb package), "authors" or "hash".
        train_on: the splits labelled "train" in the catalogue (`Source`).
    """

    SPLIT_MODES = ("official", "authors", "hash")

    info = SourceInfo(
        name="musdb18hq",
        title="MUSDB18-HQ",
        licence="MUSDB18 terms: research use only (mixed per-track licences)",
        tier="isolated",
        role="drums",
        homepage="https://zenodo.org/records/3338373",
        description="150 full songs with isolated drums, bass, vocals and other stems "
        "(train 100 / test 50), uncompressed 44.1 kHz WAV.",
    )

    def __init__(
        self,
        files: Sequence[RemoteFile] = (),
        location: str | os.PathLike | None = None,
        split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
        stems: Sequence[str] = ("drums",),
        split_mode: str = "official",
        **options: Any,
    ) -> None:
        super().__init__(files=files, location=location, split_ratios=split_ratios, split_mode=split_mode,
                         **options)
        unknown = set(stems) - set(KEEPABLE)
        if unknown or not stems:
            raise ValueError(
                f"musdb18hq: stems must be a non-empty subset of {sorted(KEEPABLE)}, got {stems}")
        self.stems = tuple(stems)

    def _split_dirs(self, root: Path) -> list[tuple[str, Path]]:
        """`(official split, folder)` pairs; the archive may or may not wrap them in a folder."""
        for base in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
            found = [(s, base / s) for s in OFFICIAL_SPLITS if (base / s).is_dir()]
            if found:
                return found
        return []

    def _own_splits(self, track_dirs: list[tuple[str, Path]]) -> dict[str, str]:
        """`official/track` -> the track's split under `split_mode`."""
        if self.split_mode == "official":
            return {f"{o}/{d.name}": "val" if o == "train" and d.name in VALIDATION_TRACKS else o
                    for o, d in track_dirs}
        if self.split_mode == "hash":
            return {f"{o}/{d.name}": self.split_of(d.name) for o, d in track_dirs}
        # The authors list `mixture.wav` files: a track folder without one is not in their list.
        own = self.assign_splits({f"{o}/{d.name}": f"{o}/{d.name}/mixture.wav" for o, d in track_dirs
                                  if (d / "mixture.wav").is_file()})
        # A track the authors never listed still needs a split: the held-out one.
        return {f"{o}/{d.name}": own.get(f"{o}/{d.name}", "test") for o, d in track_dirs}

    def consolidate(self, raw_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Consolidated:
        """Link each kept stem to the common layout; a track missing a kept stem is rejected."""
        tracks, stems, rejects = [], [], []
        for root, archive_raw_id in self.raw_roots(raw_dir):
            track_dirs = [(official, d) for official, split_dir in self._split_dirs(root)
                          for d in sorted(p for p in split_dir.iterdir() if p.is_dir())]
            own = self._own_splits(track_dirs)
            for official, track_dir in track_dirs:
                track = track_dir.name
                split = self.catalogue_split(own[f"{official}/{track}"])
                missing = [s for s in self.stems if not (track_dir / f"{s}.wav").is_file()]
                if missing:
                    rejects.append(RejectRow(
                        what="track", item=f"{official}/{track}", stage="consolidate",
                        reason="missing_stem", detail=", ".join(missing), source=self.name))
                    continue
                for archive_stem in self.stems:
                    stem, role, tier = KEEPABLE[archive_stem]
                    src = track_dir / f"{archive_stem}.wav"
                    raw_id = archive_raw_id or self.raw_id(src.relative_to(root).as_posix())
                    dest = link_or_copy(src, stem_path(out_dir, split, track, stem))
                    stems.append(probe_stem(self.name, track, stem, role, tier, split, self.info.licence,
                                            dest, raw_ids=(raw_id,)))
                tracks.append(TrackRow(
                    source=self.name, track=track, split=split, licence=self.info.licence,
                    duration_s=stems[-1].duration_s, title=track,
                    meta_json=json.dumps({"official_split": official,
                                          "source_split": own[f"{official}/{track}"]})))
        return Consolidated(tracks=tuple(tracks), stems=tuple(stems), rejects=tuple(rejects))
