"""MTG-Jamendo: 55k full-length Creative Commons songs from Jamendo (full mixes, MP3).

There are no drum stems: each song is a "mix" stem, and the separate stage extracts its drums
with Demucs, so its tier is "separated" (SPEC 5.1 notes such stems trained poorly; the codebook
curriculum lets them train only the coarse codebooks).

Layout: the audio comes in 100 tars, `raw_30s_audio-NN.tar`, each holding `NN/<id>.mp3`; the
metadata TSV (`raw_30s_cleantags.tsv` from the dataset's GitHub repository) has the columns
TRACK_ID, ARTIST_ID, ALBUM_ID, PATH (`NN/<id>.mp3`), DURATION, then one column per tag.
Choose which tars to fetch with `parts` (each is several GB); songs missing from the TSV are
rejected when a TSV is present. Every tar is checked against the sha256 the dataset publishes
(`data/download/raw_30s_audio_sha256_tars.txt` in its repository, copied to
`pipelines/sources/data/mtg_jamendo_raw_30s_audio_sha256.txt`).
"""

from __future__ import annotations

import csv
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

AUDIO_URL = "https://cdn.freesound.org/mtg-jamendo/raw_30s/audio/raw_30s_audio-{part:02d}.tar"
SHA256_LIST = Path(__file__).resolve().parent / "data" / "mtg_jamendo_raw_30s_audio_sha256.txt"


def published_sha256(path: Path = SHA256_LIST) -> dict[str, str]:
    """File name -> sha256 of the audio tars, from the dataset's published list."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            out[name] = digest.lower()
    return out


class MTGJamendo(Source):
    """MTG-Jamendo adapter (full mixes for Demucs).

    Args:
        parts: tar numbers (0-99) to download, added to `files` from `audio_url`.
        audio_url: URL template of a tar, with `{part}`.
    """

    SPLIT_MODES = ("hash",)

    info = SourceInfo(
        name="mtg_jamendo",
        title="MTG-Jamendo",
        licence="per-track Creative Commons (Jamendo)",
        tier="separated",
        role="mix",
        homepage="https://github.com/MTG/mtg-jamendo-dataset",
        description="55,701 full songs (MP3) with genre/instrument/mood tags; drums are extracted "
        "with Demucs, so they are 'separated' tier.",
    )

    def __init__(
        self,
        files: Sequence[RemoteFile] = (),
        location: str | os.PathLike | None = None,
        split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
        parts: Sequence[int] = (),
        audio_url: str = AUDIO_URL,
        **options: Any,
    ) -> None:
        bad = [p for p in parts if not 0 <= int(p) <= 99]
        if bad:
            raise ValueError(f"mtg_jamendo: parts must be in 0..99, got {bad}")
        sha256 = published_sha256() if parts else {}
        names = [f"raw_30s_audio-{int(p):02d}.tar" for p in parts]
        tars = [RemoteFile(url=audio_url.format(part=int(p)), filename=name, sha256=sha256[name])
                for p, name in zip(parts, names)]
        super().__init__(files=[*files, *tars], location=location, split_ratios=split_ratios, **options)

    def _metadata(self, raw_dir: Path) -> dict[str, dict[str, Any]] | None:
        """TSV rows by PATH (`NN/<id>.mp3`), or None when no TSV was fetched."""
        candidates = sorted((raw_dir / "downloads").glob("*.tsv"))
        if self.location is not None:  # a folder, or an archive extracted under raw_dir
            candidates += sorted(self.location.rglob("*.tsv")) if self.location.is_dir() else \
                sorted((raw_dir / "extracted").rglob("*.tsv"))
        if not candidates:
            return None
        rows: dict[str, dict[str, Any]] = {}
        for path in candidates:
            with open(path, newline="") as f:
                reader = csv.reader(f, delimiter="\t")
                header = next(reader, [])
                if header[:4] != ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH"]:
                    continue
                for rec in reader:
                    rows[rec[3]] = {"track_id": rec[0], "artist_id": rec[1], "album_id": rec[2],
                                    "duration": rec[4] if len(rec) > 4 else "", "tags": rec[5:]}
        return rows

    def consolidate(self, raw_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Consolidated:
        """Link each song to `out_dir/<split>/<track>/mix.mp3` as a "mix" stem."""
        metadata = self._metadata(Path(raw_dir))
        tracks, stems, rejects = [], [], []
        for root, archive_raw_id in self.raw_roots(raw_dir):
            for path in sorted(root.rglob("*.mp3")):
                key = "/".join(path.relative_to(root).parts[-2:])
                meta = metadata.get(key) if metadata is not None else {}
                if meta is None:
                    rejects.append(RejectRow(what="track", item=key, stage="consolidate",
                                             reason="not_in_metadata", source=self.name))
                    continue
                track = meta.get("track_id") or f"track_{path.stem}"
                split = self.split_of(track)
                rel = path.relative_to(root).as_posix()
                dest = link_or_copy(path, stem_path(out_dir, split, track, "mix", ".mp3"))
                try:
                    stem = probe_stem(self.name, track, "mix", "mix", "separated", split, self.info.licence,
                                      dest, raw_ids=(archive_raw_id or self.raw_id(rel),))
                except ValueError as err:
                    dest.unlink()
                    rejects.append(RejectRow(what="track", item=key, stage="consolidate", reason="unreadable",
                                             detail=str(err), source=self.name))
                    continue
                stems.append(stem)
                tracks.append(TrackRow(source=self.name, track=track, split=split, licence=self.info.licence,
                                       duration_s=stem.duration_s, title=track,
                                       meta_json=json.dumps({"tags": list(meta.get("tags", []))})))
        return Consolidated(tracks=tuple(tracks), stems=tuple(stems), rejects=tuple(rejects))
