"""Any folder of audio files: each file is one track with one stem of a configured role and tier.

    get_source("local_folder", location="~/my_drum_loops", tier="isolated", licence="CC-BY-4.0")

`AudioFolderSource` is also the base of the augmentation sources (`rir`, `noise`): they are
folders of audio too, only fetched from an archive and filtered by glob patterns.
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Sequence

from pipelines.sources.base import (
    AUDIO_EXTENSIONS,
    ROLES,
    SPLITS,
    TIERS,
    Consolidated,
    RejectRow,
    RemoteFile,
    Source,
    SourceInfo,
    TrackRow,
    audio_info,
    display_name,
    entry_problem,
    link_or_copy,
    probe_stem,
    stable_id,
    stem_path,
)


class AudioFolderSource(Source):
    """Every audio file under the raw roots that matches `include` and not `exclude`.

    Args:
        include: glob patterns on the path relative to its root (`*` also matches `/`).
        exclude: patterns to drop.
        tier: tier of every stem (default: `info.tier`).
        licence: licence of every track (default: `info.licence`).
        split: put every track in this split (default: hash split by `split_ratios`).
        role: what the audio is (default: `info.role`); "mix" sends it through Demucs in the pipeline.
        min_duration_s: shorter files are rejected ("too_short").
    """

    SPLIT_MODES = ("hash",)  # no "authors" split: the authors never used these corpora

    default_include: ClassVar[tuple[str, ...]] = ("*",)

    def __init__(
        self,
        files: Sequence[RemoteFile] = (),
        location: str | os.PathLike | None = None,
        split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        tier: str | None = None,
        licence: str | None = None,
        split: str | None = None,
        min_duration_s: float = 0.0,
        role: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(files=files, location=location, split_ratios=split_ratios, **options)
        self.include = tuple(include) if include else self.default_include
        self.exclude = tuple(exclude)
        self.tier = tier or self.info.tier
        self.licence = licence or self.info.licence
        if self.tier not in TIERS:
            raise ValueError(f"{self.name}: tier must be one of {TIERS}, got {self.tier!r}")
        if split is not None and split not in SPLITS:
            raise ValueError(f"{self.name}: split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.min_duration_s = float(min_duration_s)
        self.role = role or self.info.role
        if self.role not in ROLES:
            raise ValueError(f"{self.name}: role must be one of {ROLES}, got {self.role!r}")

    def wanted(self, rel: str) -> bool:
        """Does a file (path relative to its root, "/"-separated) belong to this source?"""
        if not rel.lower().endswith(AUDIO_EXTENSIONS):
            return False
        return any(fnmatch.fnmatchcase(rel, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(rel, p) for p in self.exclude
        )

    def consolidate(self, raw_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Consolidated:
        """Link each wanted file to `out_dir/<split>/<track>/<role><ext>`; unreadable or short
        files, and entries named like audio that are not files (FIFOs, folders, broken links,
        symlink loops), become rejects."""
        tracks, stems, rejects = [], [], []
        for root, archive_raw_id in self.raw_roots(raw_dir):
            # Names that are not UTF-8 are kept, escaped (see `display_name`), not dropped.
            entries = [(p, display_name(p.relative_to(root).as_posix())) for p in sorted(root.rglob("*"))]
            entries = [(p, rel) for p, rel in entries if self.wanted(rel)]
            stems_of = Counter(rel.rsplit(".", 1)[0] for _, rel in entries)
            for path, rel in entries:
                problem = entry_problem(path)
                if problem is not None:
                    rejects.append(RejectRow(what="raw_file", item=rel, stage="consolidate",
                                             reason=problem[0], detail=problem[1], source=self.name))
                    continue
                # "kick.wav" beside "kick.flac": both are kept, as distinct tracks, instead of one stem
                # id for the two files (the second would silently replace the first).
                track = rel.rsplit(".", 1)[0] if stems_of[rel.rsplit(".", 1)[0]] == 1 else rel
                raw_id = archive_raw_id or stable_id(self.name, rel)
                split = self.split or self.split_of(track)
                dest = stem_path(out_dir, split, track, self.role, path.suffix.lower())
                try:
                    sample_rate, _, n_samples = audio_info(path)
                except ValueError as err:
                    rejects.append(RejectRow(what="raw_file", item=rel, stage="consolidate", reason="unreadable",
                                             detail=display_name(str(err)), source=self.name))
                    continue
                duration_s = n_samples / sample_rate
                if duration_s < self.min_duration_s:
                    rejects.append(RejectRow(
                        what="raw_file", item=rel, stage="consolidate", reason="too_short",
                        detail=f"{duration_s:.3f} s < {self.min_duration_s} s", source=self.name))
                    continue
                link_or_copy(path, dest)
                stems.append(probe_stem(self.name, track, self.role, self.role, self.tier, split,
                                        self.licence, dest, raw_ids=(raw_id,)))
                tracks.append(TrackRow(source=self.name, track=track, split=split, licence=self.licence,
                                       duration_s=duration_s, title=Path(rel).stem))
        return Consolidated(tracks=tuple(tracks), stems=tuple(stems), rejects=tuple(rejects))


class LocalFolder(AudioFolderSource):
    """A user's folder (or archive) of drum audio; set `location`, and `tier`/`licence` to match."""

    info = SourceInfo(
        name="local_folder",
        title="Local folder of audio",
        licence="as configured",
        tier="isolated",
        role="drums",
        homepage="",
        manual_download=True,
        description="Any folder of audio files (wav, flac, ogg, mp3, aiff): one track and one drum "
        "stem per file, with the tier and licence given in the config.",
    )
