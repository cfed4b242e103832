"""One small filesystem layer for local paths and object-store URIs (`s3://`, `gs://`, ...).

Stages pass paths as strings and go through these functions, so the same code writes to a
local disk on one machine and to object storage on a cluster (ARCHITECTURE "Scale"). It is a
thin wrapper over `pyarrow.fs`, which already speaks local, S3, GCS and HDFS.

    >>> from tria import fs
    >>> fs.write_bytes("s3://bucket/shards/x.json", b"{}")     # or a local path
    >>> fs.exists("/data/raw/musdb18hq/downloads/musdb18hq.zip")

Downloads with Range resume stay on local disk (object stores cannot append to a file).
"""

from __future__ import annotations

import os
import re
from typing import BinaryIO

import pyarrow.fs as pafs

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_uri(path: str | os.PathLike) -> bool:
    """True for `scheme://...` (object stores, `file://`), False for plain local paths."""
    return bool(_URI.match(str(path)))


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for `path` and the path inside it."""
    path = str(path)
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    """Join with "/" for URIs and `os.path.join` for local paths."""
    if is_uri(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(base, *parts)


def exists(path: str | os.PathLike) -> bool:
    filesystem, inner = resolve(path)
    return filesystem.get_file_info(inner).type != pafs.FileType.NotFound


def isdir(path: str | os.PathLike) -> bool:
    filesystem, inner = resolve(path)
    return filesystem.get_file_info(inner).type == pafs.FileType.Directory


def size(path: str | os.PathLike) -> int:
    filesystem, inner = resolve(path)
    info = filesystem.get_file_info(inner)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"no file at {path}")
    return int(info.size)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names (not paths) of the entries of a folder, sorted."""
    filesystem, inner = resolve(path)
    infos = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=False))
    return sorted(info.base_name for info in infos)


def makedirs(path: str | os.PathLike) -> None:
    filesystem, inner = resolve(path)
    filesystem.create_dir(inner, recursive=True)


def open_read(path: str | os.PathLike) -> BinaryIO:
    """A seekable binary file to read (soundfile, tarfile and json all accept it)."""
    filesystem, inner = resolve(path)
    return filesystem.open_input_file(inner)


def open_write(path: str | os.PathLike) -> BinaryIO:
    """A binary output stream; parent folders are created. Not seekable on object stores."""
    filesystem, inner = resolve(path)
    parent = inner.rsplit("/", 1)[0] if "/" in inner else ""
    if parent:
        filesystem.create_dir(parent, recursive=True)
    return filesystem.open_output_stream(inner)


def read_bytes(path: str | os.PathLike) -> bytes:
    with open_read(path) as f:
        return f.read()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` under a temporary name, then rename: readers never see a partial file."""
    tmp = f"{path}.tmp"
    with open_write(tmp) as f:
        f.write(data)
    rename(tmp, path)


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a file within one filesystem (atomic on local disks, copy+delete on object stores)."""
    filesystem, inner_src = resolve(src)
    other, inner_dst = resolve(dst)
    if type(other) is not type(filesystem):
        raise ValueError(f"rename across filesystems is not supported: {src} -> {dst}")
    filesystem.move(inner_src, inner_dst)


def remove(path: str | os.PathLike) -> None:
    filesystem, inner = resolve(path)
    filesystem.delete_file(inner)
