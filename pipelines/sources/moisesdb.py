"""MoisesDB: 240 songs as per-instrument multitracks (download by hand after a form).

Download `moisesdb.zip` from https://music.ai/research/ and pass it (or the folder it unpacks
to) as `location`. Layout: `moisesdb/moisesdb_v0.1/<track uuid>/data.json` plus one sub-folder
per instrument (`drums/`, `percussion/`, `bass/`, `guitar/`, `vocals/`, ...), each holding one or
more `<uuid>.wav` files.

Consolidation (SPEC 5.1, as the authors' `consolidate_moises.py`): a track's drum stem is the sum
of every wav in sub-folders whose name contains "drum" or "percussion"; all of the track's files
are zero-padded to its longest file (any instrument) and the sum is peak-limited to 1 (divided
by its peak only when the peak exceeds 1).

One deliberate change, with an option to undo it: the `percussion` stem also holds pitched
percussion (glockenspiel, marimba, mallets: `trackType` "pitched percussion (mallets,
glockenspiel, ...)" in the track's `data.json`, whose `stems[].tracks[]` name each file by `id`
and `extension` under the folder `stemName`). Those files are left out of the drum sum by
default; `pitched_percussion: true` keeps them, as the authors did.

Splits: `split_mode: authors` lists every track folder with audio as `<uuid>/mixture.wav` (the
authors' consolidation writes one per track) and splits them like their manifests; "hash"
(default) hashes the uuid. Their release config trains on all three splits
(`train_on: [train, val, test]`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf

from pipelines.sources.base import (
    Consolidated,
    ManualDownloadRequired,
    RejectRow,
    RemoteFile,
    Source,
    SourceInfo,
    StemRow,
    TrackRow,
    audio_info,
    probe_stem,
    stem_path,
    write_wav,
)

DRUM_WORDS = ("drum", "percussion")
# Published in the moises-db README ("Dataset Integrity"), for the file `moisesdb.zip` only.
MOISESDB_SHA256 = "4cde33ce416ac7c868cffcb60eb31f5c741ab7ae5601cbb9d99ed498b72c48c1"
MOISESDB_MD5 = "13cf74eda129c38b914a51ea79fb1778"
ARCHIVE_NAME = "moisesdb.zip"


def is_pitched_percussion(track_type: str) -> bool:
    """True for MoisesDB's "pitched percussion (mallets, glockenspiel, ...)" track type."""
    return " ".join(str(track_type).lower().replace("_", " ").split()).startswith("pitched percussion")


def pitched_percussion_files(meta: dict[str, Any]) -> set[str]:
    """`<stemName>/<id>.<extension>` of every pitched-percussion file listed in a `data.json`."""
    out = set()
    for stem in meta.get("stems") or ():
        if not isinstance(stem, dict):
            continue
        for track in stem.get("tracks") or ():
            if isinstance(track, dict) and is_pitched_percussion(track.get("trackType", "")):
                out.add(f"{stem.get('stemName', '')}/{track.get('id', '')}.{track.get('extension', 'wav')}")
    return out


def is_drum_folder(name: str) -> bool:
    """SPEC 5.1: a sub-folder is drums if its name contains "drum" or "percussion"."""
    lower = name.lower()
    return any(word in lower for word in DRUM_WORDS)


def sum_stems(paths: Sequence[Path], length: int) -> tuple[np.ndarray, int]:
    """Sum audio files, zero-padded to `length` samples, then peak-limit to 1.

    Mono files are spread over the channels of the widest file.

    Returns:
        `(audio (C, length) float32, sample_rate)`.

    Raises:
        ValueError: the files do not share one sample rate, or one is longer than `length`.
    """
    signals, rates = [], set()
    for path in paths:
        data, sr = sf.read(str(path), dtype="float64", always_2d=True)  # (N, C)
        signals.append(data.T)
        rates.add(sr)
    if len(rates) != 1:
        raise ValueError(f"sample rates differ: {sorted(rates)}")
    n_channels = max(s.shape[0] for s in signals)
    total = np.zeros((n_channels, length), dtype=np.float64)
    for s in signals:
        if s.shape[1] > length:
            raise ValueError(f"a file has {s.shape[1]} samples, more than the padded length {length}")
        total[:, : s.shape[1]] += s  # (1, N) broadcasts over channels
    peak = float(np.abs(total).max(initial=0.0))
    if peak > 1.0:
        total /= peak
    return total.astype(np.float32), rates.pop()


class MoisesDB(Source):
    """MoisesDB adapter (manual download).

    Args:
        location: `moisesdb.zip` (checked against its published sha256 and md5) or the unpacked
            folder (not checked).
        sha256: expected sha256 of the archive. Default: the published one when the archive is
            named `moisesdb.zip`; an archive of another name (a repack) is checked only when
            this is given.
        pitched_percussion: keep pitched percussion in the drum stem (the authors' behaviour).
        split_mode, train_on: as `Source`.
    """

    info = SourceInfo(
        name="moisesdb",
        title="MoisesDB",
        licence="CC-BY-NC-SA-4.0",
        tier="isolated",
        role="drums",
        homepage="https://music.ai/research/",
        manual_download=True,
        description="240 songs with per-instrument multitracks; drums and percussion tracks are "
        "summed into one drum stem per song.",
    )

    def __init__(
        self,
        files: Sequence[RemoteFile] = (),
        location: str | os.PathLike | None = None,
        split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
        sha256: str | None = None,
        pitched_percussion: bool = False,
        **options: Any,
    ) -> None:
        if not files:  # the published file: a user's `moisesdb.zip` is checked against it
            files = (RemoteFile(url=self.info.homepage, filename=ARCHIVE_NAME, sha256=MOISESDB_SHA256,
                                md5=MOISESDB_MD5),)
        super().__init__(files=files, location=location, split_ratios=split_ratios, sha256=sha256,
                         **options)
        self.pitched_percussion = bool(pitched_percussion)

    def fetch(self, dest_dir: str | os.PathLike, **download_options: Any) -> list:
        if self.location is None:  # behind a form: there is nothing we can download
            raise ManualDownloadRequired(
                f"{self.info.title} must be downloaded by hand from {self.info.homepage}; "
                f"then pass location=<{ARCHIVE_NAME} or its unpacked folder> for source {self.name!r}")
        if not self.location.is_dir() and self.location.name != ARCHIVE_NAME and not self.sha256:
            print(f"[moisesdb] note: {self.location.name} is not {ARCHIVE_NAME}, whose checksums are "
                  "published; it is used unchecked (pass sha256 to check it)", flush=True)
        return super().fetch(dest_dir, **download_options)

    def consolidate(self, raw_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Consolidated:
        """Write one summed drum stem per track; tracks without drums are rejected."""
        tracks, stems, rejects = [], [], []
        for root, archive_raw_id in self.raw_roots(raw_dir):
            track_dirs = [p.parent for p in sorted(root.rglob("data.json"))]
            # The authors' manifest lists one `<uuid>/mixture.wav` per track that has any audio.
            own = self.assign_splits({d.name: f"{d.name}/mixture.wav" for d in track_dirs
                                      if any(d.glob("*/**/*.wav"))})
            for track_dir in track_dirs:
                result = self._track(root, track_dir, archive_raw_id, Path(out_dir), own.get(track_dir.name, "test"))
                if isinstance(result, RejectRow):
                    rejects.append(result)
                else:
                    tracks.append(result[0])
                    stems.append(result[1])
        return Consolidated(tracks=tuple(tracks), stems=tuple(stems), rejects=tuple(rejects))

    def _track(
        self, root: Path, track_dir: Path, archive_raw_id: str | None, out_dir: Path, own_split: str
    ) -> tuple[TrackRow, StemRow] | RejectRow:
        """Consolidate one track folder: its rows, or why it was rejected."""
        track = track_dir.name
        subdirs = sorted(d for d in track_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        all_files = sorted(p for d in subdirs for p in d.rglob("*.wav"))
        meta = _read_json(track_dir / "data.json")
        pitched = set() if self.pitched_percussion else pitched_percussion_files(meta)
        drum_parts = [p for p in all_files if is_drum_folder(p.relative_to(track_dir).parts[0])]
        drum_files = [p for p in drum_parts if p.relative_to(track_dir).as_posix() not in pitched]
        left_out = [p.relative_to(track_dir).as_posix() for p in drum_parts if p not in drum_files]

        def reject(reason: str, detail: str = "") -> RejectRow:
            return RejectRow(what="track", item=track, stage="consolidate", reason=reason, detail=detail,
                             source=self.name)

        if not drum_files:
            if left_out:
                return reject("only_pitched_percussion", ", ".join(left_out))
            return reject("no_drums", f"folders: {', '.join(d.name for d in subdirs)}")
        split = self.catalogue_split(own_split)
        dest = stem_path(out_dir, split, track, "drums")
        # A finished stem is kept (re-runs do no work) unless it was summed from other parts, e.g.
        # before `pitched_percussion` changed; the parts it holds are recorded beside it.
        parts = dest.with_name(dest.name + ".parts.json")
        want = json.dumps([p.relative_to(track_dir).as_posix() for p in drum_files])
        if not dest.exists() or not parts.exists() or parts.read_text() != want:
            try:
                length = max(audio_info(p)[2] for p in all_files)
                audio, sr = sum_stems(drum_files, length)
            except ValueError as err:
                return reject("unreadable", str(err))
            write_wav(dest, audio, sr)
            parts.write_text(want)
        raw_ids = (archive_raw_id,) if archive_raw_id else tuple(
            self.raw_id(p.relative_to(root).as_posix()) for p in drum_files)
        stem = probe_stem(self.name, track, "drums", "drums", "isolated", split, self.info.licence, dest,
                          raw_ids=raw_ids)
        title = " - ".join(str(meta[k]) for k in ("artist", "song") if meta.get(k)) or track
        keep = {k: meta[k] for k in ("artist", "song", "genre") if k in meta}
        keep["drum_parts"] = [p.relative_to(track_dir).as_posix() for p in drum_files]
        keep["pitched_percussion_left_out"] = left_out
        keep["source_split"] = own_split
        row = TrackRow(source=self.name, track=track, split=split, licence=self.info.licence,
                       duration_s=stem.duration_s, title=title, meta_json=json.dumps(keep, sort_keys=True))
        return row, stem


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
