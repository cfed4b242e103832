"""The contract every source adapter implements, and the helpers they share.

An adapter knows one corpus: where to fetch it (`files`, or a user's `location` for corpora
behind a form), how to verify it, how its tracks and stems are laid out, its licence, split
and quality tier. Two steps, both idempotent:

* `fetch(dest_dir)` downloads (resumable, checksummed) or locates the raw files, extracts
  archives into `dest_dir/extracted/`, and returns one `RawFileRow` per raw file.
* `consolidate(raw_dir, out_dir)` writes one audio file per stem in the common layout
  `out_dir/<split>/<track>/<stem>.wav` and returns `Consolidated` (track, stem and reject
  rows). It never writes the catalogue: the caller (the job driver) does.

A minimal adapter::

    class MyKits(Source):
        info = SourceInfo(name="mykits", title="My kits", licence="CC0-1.0",
                          tier="synthetic", role="drums", homepage="https://example.org")

        def consolidate(self, raw_dir, out_dir):
            ...
            return Consolidated(tracks=(...), stems=(...))
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
import shutil
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import soundfile as sf

from pipelines.stages.download import sha256_file
from pipelines.rows import (
    ROLES,
    SPLITS,
    TIERS,
    RawFileRow,
    RejectRow,
    SourceRow,
    StemRow,
    TrackRow,
    stable_id,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "ROLES",
    "SPLITS",
    "TIERS",
    "Consolidated",
    "ManualDownloadRequired",
    "RawFileRow",
    "RejectRow",
    "RemoteFile",
    "Source",
    "SourceInfo",
    "StemRow",
    "TrackRow",
    "audio_info",
    "authors_split",
    "display_name",
    "entry_problem",
    "hash_split",
    "link_or_copy",
    "probe_stem",
    "sha256_file",
    "slug",
    "stable_id",
    "stem_path",
    "track_dir",
    "write_wav",
]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


class ManualDownloadRequired(RuntimeError):
    """The corpus sits behind a form: the user must download it and pass `location`."""


@dataclass(frozen=True)
class SourceInfo:
    """What a corpus is: shown by `python -m pipelines.sources list`, stored in `sources`.

    Attributes:
        name: registry name (`[a-z0-9_]+`).
        title: human title.
        licence: SPDX-like licence id or a short phrase ("per-track CC", "research only").
        tier: default quality tier of its drum audio ("isolated", "separated", "synthetic").
        role: what its audio is ("drums", "mix", "rir", "noise").
        homepage: where a person reads about it.
        manual_download: True when it cannot be fetched by URL (a form, a licence click).
        description: one paragraph: layout, what is kept.
    """

    name: str
    title: str
    licence: str
    tier: str
    role: str
    homepage: str = ""
    manual_download: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9_]+", self.name):
            raise ValueError(f"SourceInfo.name must match [a-z0-9_]+, got {self.name!r}")
        if self.tier not in TIERS:
            raise ValueError(f"SourceInfo.tier must be one of {TIERS}, got {self.tier!r}")
        if self.role not in ROLES:
            raise ValueError(f"SourceInfo.role must be one of {ROLES}, got {self.role!r}")

    def to_row(self) -> SourceRow:
        """The catalogue row of this source."""
        return SourceRow(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SourceRow)})


@dataclass(frozen=True)
class RemoteFile:
    """One file to download. `size`, `sha256` and `md5` are checked when known (None = unknown).

    `md5` is there because some hosts (Zenodo) publish only an md5 of their files.
    """

    url: str
    filename: str
    size: int | None = None
    sha256: str | None = None
    extract: bool = True
    md5: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RemoteFile":
        url = str(data["url"])
        return cls(
            url=url,
            filename=str(data.get("filename") or url.rstrip("/").rsplit("/", 1)[-1]),
            size=int(data["size"]) if data.get("size") is not None else None,
            sha256=str(data["sha256"]).lower() if data.get("sha256") else None,
            extract=bool(data.get("extract", True)),
            md5=str(data["md5"]).lower() if data.get("md5") else None,
        )


@dataclass(frozen=True)
class Consolidated:
    """What `Source.consolidate` returns: rows for the catalogue, nothing written yet."""

    tracks: tuple[TrackRow, ...] = ()
    stems: tuple[StemRow, ...] = ()
    rejects: tuple[RejectRow, ...] = ()


class Source(ABC):
    """A corpus adapter. Subclasses set `info` and implement `consolidate`.

    Args:
        files: what to download (from `conf/sources.yaml`); empty for manual/local sources.
        location: an archive or folder the user already has. It replaces the downloads: with a
            `location`, nothing is fetched. An archive named like one of `files` is checked
            against that entry's size and digests, unless `sha256` is given.
        split_ratios: train/val/test fractions for corpora without an official split.
        sha256: expected digest of a `location` archive (checked before extraction), if known.
        split_mode: "hash" (a hash of the track name: stable when files are added) or "authors"
            (the authors' `create_manifests`: see `authors_split`); adapters may add their own.
        train_on: the source's own splits whose tracks the catalogue labels "train" (the
            authors' configs train on more than one split, e.g. MUSDB train + test); the
            other splits keep their name. Each track's own split stays in its `meta_json`.
        options: must be empty: subclasses take their settings as named arguments, and pass the
            rest here so that a misspelt setting is an error, not silently ignored.

    Raises:
        ValueError: unknown options, bad split ratios, split mode or `train_on`.
    """

    info: ClassVar[SourceInfo]
    SPLIT_MODES: ClassVar[tuple[str, ...]] = ("hash", "authors")

    def __init__(
        self,
        files: Sequence[RemoteFile] = (),
        location: str | os.PathLike | None = None,
        split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
        sha256: str | None = None,
        split_mode: str = "hash",
        train_on: Sequence[str] = ("train",),
        **options: Any,
    ) -> None:
        if options:
            raise ValueError(f"{self.info.name}: unknown options {sorted(options)}")
        if len(split_ratios) != 3 or any(r < 0 for r in split_ratios) or sum(split_ratios) <= 0:
            raise ValueError(f"split_ratios must be 3 non-negative numbers, got {split_ratios}")
        if split_mode not in self.SPLIT_MODES:
            raise ValueError(f"{self.info.name}: split_mode must be one of {list(self.SPLIT_MODES)}, "
                             f"got {split_mode!r}")
        if "train" not in train_on or set(train_on) - set(SPLITS):
            raise ValueError(f"{self.info.name}: train_on must list splits of {SPLITS} including 'train', "
                             f"got {list(train_on)}")
        self.split_mode = split_mode
        self.train_on = tuple(train_on)
        self.files = tuple(files)
        # Absolute, so catalogue paths stay valid for jobs that run in another working directory.
        self.location = Path(location).expanduser().resolve() if location else None
        self.split_ratios = tuple(float(r) for r in split_ratios)
        self.sha256 = sha256.lower() if sha256 else None

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> "Source":
        """Build from one `conf/sources.yaml` entry (keys: files, location, split_ratios, ...)."""
        entry = dict(entry)
        files = [RemoteFile.from_dict(f) for f in entry.pop("files", None) or ()]
        return cls(files=files, **entry)

    @property
    def name(self) -> str:
        return self.info.name

    def fetch(self, dest_dir: str | os.PathLike, **download_options: Any) -> list[RawFileRow]:
        """Download (or locate) and verify the raw files; extract archives. Resumable.

        Downloads `self.files` (a complete file is not fetched again) and extracts archives to
        `dest_dir/extracted/<archive name>/`. A user-given `location` replaces the downloads and
        is used in place: a folder is read where it is, an archive is checked (against `sha256`,
        and against the size and digests of the download of the same file name) and extracted
        like a download. Nothing is fetched then.

        Args:
            dest_dir: the source's raw folder (`<data>/raw/<source>`).
            download_options: fields of `DownloadConfig` (retries, timeout_s, progress...).

        Returns:
            One row per raw file: each download, the user's archive, or each file of a folder.

        Raises:
            ManualDownloadRequired: a manual source without `location`.
        """
        from pipelines.stages.download import DownloadConfig, fetch_and_extract

        dest_dir = Path(dest_dir)
        if self.location is None and not self.files:
            if self.info.manual_download:
                raise ManualDownloadRequired(
                    f"{self.info.title} must be downloaded by hand from {self.info.homepage}; "
                    f"then pass location=<archive or folder> for source {self.name!r}"
                )
            raise ValueError(f"source {self.name!r} has nothing to fetch: set files or location")
        if self.location is not None:
            return self._fetch_location(dest_dir)
        config = DownloadConfig(**download_options)
        return [fetch_and_extract(self.name, f, dest_dir, config) for f in self.files]

    def _fetch_location(self, dest_dir: Path) -> list[RawFileRow]:
        from pipelines.stages.download import ChecksumError, archive_stem, extract, md5_file

        loc = self.location
        assert loc is not None
        if loc.is_dir():
            return [
                RawFileRow(source=self.name, name=display_name(p.relative_to(loc).as_posix()),
                           path=display_name(str(p)), size=p.stat().st_size)
                for p in sorted(loc.rglob("*")) if p.is_file() and not p.name.startswith(".")
            ]
        if not loc.is_file():
            raise FileNotFoundError(f"source {self.name!r}: location {loc} does not exist")
        stem = archive_stem(loc.name)
        if stem is None:
            raise ValueError(f"source {self.name!r}: location {loc} is neither a folder nor an archive")
        digest = _cached_sha256(loc, dest_dir / "location.sha256")
        if self.sha256 and digest != self.sha256:
            raise ChecksumError(f"{loc}: sha256 {digest} does not match the expected {self.sha256}")
        published = next((f for f in self.files if f.filename == loc.name), None)
        if published is not None and not self.sha256:  # a copy of a file we would download: same checks
            if published.size is not None and loc.stat().st_size != published.size:
                raise ChecksumError(f"{loc}: {loc.stat().st_size} bytes, the published {loc.name} has {published.size}")
            if published.sha256 and digest != published.sha256:
                raise ChecksumError(f"{loc}: sha256 {digest} does not match the published {published.sha256}")
            if published.md5 and md5_file(loc) != published.md5:
                raise ChecksumError(f"{loc}: md5 does not match the published {published.md5}")
        extract(loc, dest_dir / "extracted" / stem)
        return [RawFileRow(source=self.name, name=loc.name, path=str(loc), size=loc.stat().st_size,
                           sha256=digest)]

    def raw_roots(self, raw_dir: str | os.PathLike) -> list[tuple[Path, str | None]]:
        """Folders to read at consolidation, each with the raw id its files come from.

        Returns `(folder, raw_id)` pairs: an extracted archive gives the archive's raw id; a
        user's folder gives None, meaning each file is its own raw file (id from its path).
        """
        from pipelines.stages.download import archive_stem

        if self.location is not None and self.location.is_dir():
            return [(self.location, None)]
        if self.location is not None:  # the user's archive replaces the downloads
            archives = {archive_stem(self.location.name): self.location.name}
        else:
            archives = {archive_stem(f.filename): f"downloads/{f.filename}" for f in self.files}
        extracted = Path(raw_dir) / "extracted"
        return [
            (extracted / stem, stable_id(self.name, name))
            for stem, name in sorted(archives.items(), key=lambda kv: str(kv[0]))
            if stem is not None and (extracted / stem).is_dir()
        ]

    def raw_id(self, name: str) -> str:
        """Id of the raw file called `name` (as in `RawFileRow.name`)."""
        return stable_id(self.name, name)

    @abstractmethod
    def consolidate(self, raw_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Consolidated:
        """Write stems in the common layout under `out_dir` and return their rows."""

    def split_of(self, key: str) -> str:
        """Hash split of a track (stable whatever other tracks exist)."""
        return hash_split(f"{self.name}|{key}", self.split_ratios)

    def assign_splits(self, keys: Mapping[str, str]) -> dict[str, str]:
        """The source's own split of every track, by `split_mode`.

        Args:
            keys: track -> the path the authors' manifest script would list for it (relative to
                the corpus root, e.g. `train/<track>/mixture.wav`); "authors" mode sorts and
                permutes these, "hash" mode uses the track names only.
        """
        if self.split_mode == "authors":
            by_key = authors_split(keys.values(), self.split_ratios)
            return {track: by_key[key] for track, key in keys.items()}
        return {track: self.split_of(track) for track in keys}

    def catalogue_split(self, own: str) -> str:
        """The catalogue's split of a track whose own split is `own` ("train" if in `train_on`)."""
        return "train" if own in self.train_on else own


# ---------------------------------------------------------------------------------------------
# Helpers shared by adapters.


def hash_split(key: str, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """Split from a hash of `key`: stable whatever the file order or the number of files.

    This is NOT the authors' split (see `authors_split`): it keeps their proportions only, and
    never moves a track when files are added.
    """
    total = float(sum(ratios))
    u = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) / 0x1_0000_0000
    edge = 0.0
    for split, ratio in zip(SPLITS, ratios):
        edge += ratio / total
        if u < edge:
            return split
    return SPLITS[-1]


def authors_split(
    paths: Iterable[str], ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, str]:
    """The authors' manifest split (`tria/data/preprocess.py::create_manifests`, SPEC 5.1).

    Their algorithm: sort the file paths by their lower-cased text, permute the indices with
    `numpy.random.RandomState(seed).permutation(n)`, give the first floor(p_train * n) to train,
    the next floor(p_val * n) to val and the rest to test. They sort absolute paths under one
    corpus folder, so passing the paths relative to that folder gives the same order.

    Returns:
        path -> "train" | "val" | "test".
    """
    paths = sorted(set(paths), key=lambda p: str(p).lower())
    n = len(paths)
    total = float(sum(ratios))
    p_train, p_val = ratios[0] / total, ratios[1] / total
    n_train, n_val = int(np.floor(p_train * n)), int(np.floor(p_val * n))
    order = np.random.RandomState(seed).permutation(n)
    out = {}
    for rank, i in enumerate(order):
        out[paths[int(i)]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def slug(text: str) -> str:
    """A file-system-safe track name: keeps letters, digits, `-_.`; other runs become `_`."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    if not out:
        raise ValueError(f"cannot make a file name from {text!r}")
    return out


def track_dir(track: str) -> str:
    """Folder name of a track: readable slug plus a short hash, so distinct names never collide."""
    return f"{slug(track)[:80]}-{stable_id(track, n=8)}"


def stem_path(out_dir: str | os.PathLike, split: str, track: str, stem: str, ext: str = ".wav") -> Path:
    """The common layout: `out_dir/<split>/<track dir>/<stem><ext>`."""
    return Path(out_dir) / split / track_dir(track) / f"{stem}{ext}"


def _cached_sha256(path: Path, cache: Path) -> str:
    """sha256 of a large user file, remembered while its size and mtime stay the same."""
    import json

    st = path.stat()
    key = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        cached = json.loads(cache.read_text())
        if {k: cached.get(k) for k in key} == key:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_file(path)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({**key, "sha256": digest}))
    return digest


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """`(sample_rate, n_channels, n_samples)` of an audio file, from its header.

    Raises:
        ValueError: the file is not readable audio.
    """
    try:
        # Bytes, not str: soundfile encodes a str path strictly, so a file name that is not valid
        # UTF-8 (surrogate escapes) would raise UnicodeEncodeError instead of being read.
        info = sf.info(os.fsencode(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"not readable audio: {display_name(os.fspath(path))}: {err}") from err
    return int(info.samplerate), int(info.channels), int(info.frames)


def display_name(text: str) -> str:
    """`text` made encodable as UTF-8: undecodable file-name bytes (surrogate escapes) become `\\xNN`.

    Linux file names are bytes; Python decodes the ones that are not UTF-8 (old Latin-1 zips) with
    surrogate escapes, which DuckDB/Arrow and sha1 ids cannot store. The escaped form is stable,
    readable and unique per name.
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def entry_problem(path: str | os.PathLike) -> tuple[str, str] | None:
    """Why a folder entry named like audio cannot be read as a file, or None for a regular file.

    Checked before any open: opening a FIFO blocks forever, and `Path.is_file()` silently hides
    directories, dangling links and symlink loops, which would then vanish without a reject.

    Returns:
        `(reason, detail)` with reason "symlink_loop", "broken_link" or "not_a_file".
    """
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a regular file is fine
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink_loop", f"too many levels of symbolic links: {display_name(os.fspath(path))}"
        if os.path.islink(path):
            return "broken_link", f"link target {display_name(os.readlink(path))!r} does not exist"
        return "not_a_file", f"cannot stat: {err.strerror}"
    if stat.S_ISREG(mode):
        return None
    kind = ("directory" if stat.S_ISDIR(mode) else "fifo" if stat.S_ISFIFO(mode) else "socket"
            if stat.S_ISSOCK(mode) else "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special")
    return "not_a_file", f"a {kind}, not a regular file"


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Write `audio` (C, N) float as 24-bit PCM WAV, atomically (temp name then rename)."""
    if audio.ndim != 2:
        raise ValueError(f"audio must be (C, N), got shape {audio.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), np.ascontiguousarray(audio.T), sample_rate, subtype="PCM_24", format="WAV")
    os.replace(tmp, path)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Put `src` at `dst` without copying bytes when possible (hard link), else copy.

    An existing `dst` with the same size is kept, so consolidation re-runs do no work.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # other device, or a file system without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def probe_stem(
    source: str,
    track: str,
    stem: str,
    role: str,
    tier: str,
    split: str,
    licence: str,
    path: str | os.PathLike,
    raw_ids: Sequence[str] = (),
    parent_stem_id: str = "",
) -> StemRow:
    """A `StemRow` for an audio file already in place: format from its header, sha256 of its bytes.

    Raises:
        ValueError: the file is not readable audio.
    """
    sample_rate, n_channels, n_samples = audio_info(path)
    return StemRow(
        source=source, track=track, stem=stem, role=role, tier=tier, split=split, licence=licence,
        path=str(path), sample_rate=sample_rate, n_channels=n_channels, n_samples=n_samples,
        raw_ids=tuple(raw_ids), parent_stem_id=parent_stem_id, sha256=sha256_file(path),
    )
