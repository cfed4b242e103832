"""Shard stage: the field sets of a shard group, written as WebDataset tars by Ray workers (SHARDS.md).

The excerpts are partitioned once into shard groups (split, tier, index, ordered keys; recorded in the
catalogue's ``shard_groups``). Each field set stores a group as one tar with the group's keys in the
group's order, so that no field is ever rewritten when another one is added:

* tokens, once per codec:  ``<root>/<split>/<tier>/tokens-<codec_id>/shard-NNNNNN.tar`` with
  ``<key>.tokens.npy`` (int16 (9, T)), ``<key>.json`` (excerpt metadata, ``n_frames``) and, for the
  splits in ``flac_splits``, ``<key>.flac``;
* rhythm prompts, once per (features, augmentation) config:
  ``<root>/<split>/<tier>/prompts-<features_id>-<augment_id>/shard-NNNNNN.tar`` with ``<key>.feats.npy``
  (float16 (K, n_bands, T)) and ``<key>.json``.

Beside every tar, ``shard-NNNNNN.tar.idx`` (JSON) gives each sample's key and the byte offset, dtype and
shape of its arrays, so that the trainer's reader seeks and ``np.frombuffer``s instead of walking tar
headers (``tria.data``). The members stay standard ``.npy`` files: ``webdataset`` reads the tars as they
are, and a reader without the index walks the headers.

Writing is atomic: on a local or shared path a tar goes to ``*.tar.tmp``, is fsync'd and renamed (a crash
leaves at most a ``.tmp``, removed on the next run); on an object store (``s3://...``) it is one upload of
the finished bytes. The index is written after the tar and records the tar's size and sha256, so a
reader can tell a stale index from a current one. Workers return only rows (path, size, sha256, keys);
the driver registers them (``pipelines.run``), so a file without a row is an orphan the next run removes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tria import fs
from tria.rows import ShardGroupRow, ShardRow

SHARD_RE = re.compile(r"shard-(\d{6})\.tar$")
INDEX_SUFFIX = ".idx"
INDEX_FORMAT = "tria-shard-index/1"
KINDS = ("tokens", "prompts")


@dataclass(frozen=True)
class ShardConfig:
    samples_per_shard: int = 256
    flac_splits: tuple[str, ...] = ("val", "test")  # keep excerpt audio for listening/validation


def field_dir(kind: str, ids: dict[str, str]) -> str:
    """Folder name of a field set: ``tokens-<codec_id>`` or ``prompts-<features_id>-<augment_id>``."""
    if kind == "tokens":
        return f"tokens-{ids['codec_id']}"
    if kind == "prompts":
        return f"prompts-{ids['features_id']}-{ids['augment_id']}"
    raise ValueError(f"unknown field set {kind!r}; known: {KINDS}")


def shard_path(root: str, split: str, tier: str, kind: str, ids: dict[str, str], idx: int) -> str:
    return fs.join(str(root), split, tier, field_dir(kind, ids), f"shard-{idx:06d}.tar")


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def sample_members(kind: str, sample: dict[str, Any]) -> list[tuple[str, bytes | np.ndarray]]:
    """Tar members of one sample of a field set, in a fixed order (arrays are stored as ``.npy``)."""
    key = sample["key"]
    meta = json.dumps(sample["meta"], sort_keys=True).encode()
    if kind == "prompts":
        return [(f"{key}.feats.npy", np.asarray(sample["feats"], dtype=np.float16)), (f"{key}.json", meta)]
    members: list[tuple[str, bytes | np.ndarray]] = [
        (f"{key}.tokens.npy", np.asarray(sample["tokens"], dtype=np.int16)), (f"{key}.json", meta)]
    if sample.get("flac"):
        members.append((f"{key}.flac", sample["flac"]))
    return members


class _Hashing(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.n

    def write(self, b: Any) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.n += len(b)
        return len(b)


def _write_members(f: Any, kind: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Writes the tar to ``f``; returns the index (array offsets are absolute file offsets)."""
    index: dict[str, Any] = {"format": INDEX_FORMAT, "keys": [], "arrays": {}, "meta": {}}
    with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            index["keys"].append(sample["key"])
            for name, value in sample_members(kind, sample):
                data = _npy(value) if isinstance(value, np.ndarray) else value
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: same bytes again
                start = tar.offset
                tar.addfile(info, io.BytesIO(data))
                if isinstance(value, np.ndarray):
                    header = tar.offset - start - -(-len(data) // 512) * 512  # the tar header block(s)
                    offset = start + header + len(data) - value.nbytes  # past the .npy header
                    index["arrays"].setdefault(name.split(".", 1)[1], []).append(
                        [offset, value.dtype.str, list(value.shape)])
            for field in ("n_frames", "tier"):
                if field in sample["meta"]:
                    index["meta"].setdefault(field, []).append(sample["meta"][field])
    return index


def write_shard(path: str, kind: str, samples: list[dict[str, Any]]) -> tuple[int, str]:
    """Write one field-set tar and its index atomically; returns ``(n_bytes, sha256)`` of the tar."""
    try:
        if fs.is_uri(path):  # object store: build the bytes, then one upload (no partial object is visible)
            buf = io.BytesIO()
            hashing = _Hashing(buf)
            index = _write_members(hashing, kind, samples)
            with fs.open_write(path) as out:
                out.write(buf.getvalue())
        else:
            tmp = f"{path}.tmp"
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    hashing = _Hashing(f)
                    index = _write_members(hashing, kind, samples)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        index.update(tar_bytes=hashing.n, sha256=hashing.sha.hexdigest())
        blob = json.dumps(index, separators=(",", ":")).encode()
        if fs.is_uri(path):  # one PUT is atomic on an object store (a rename there is a copy)
            with fs.open_write(path + INDEX_SUFFIX) as out:
                out.write(blob)
        else:
            fs.write_bytes(path + INDEX_SUFFIX, blob)
    except OSError as e:
        # A full disk (ENOSPC), a lost mount, a refused upload: name the shard in the error (the bare
        # OSError says only "No space left on device"); no partial file stays under a final name.
        for leftover in (path + INDEX_SUFFIX + ".tmp", path + INDEX_SUFFIX, path):
            _remove_quietly(leftover)
        raise OSError(e.errno, f"cannot write shard {path} ({len(samples)} samples): {e.strerror or e}") from e
    return hashing.n, hashing.sha.hexdigest()


def _remove_quietly(path: str) -> None:
    try:
        if fs.exists(path):
            fs.remove(path)
    except OSError:
        pass


def remove_shard(path: str) -> None:
    """Delete a shard and its index (a worker undoing a group it could not finish)."""
    for p in (path, path + INDEX_SUFFIX):
        _remove_quietly(p)


def write_group_field(root: str, kind: str, group: ShardGroupRow, samples: list[dict[str, Any]],
                      ids: dict[str, str], run_id: str = "") -> ShardRow:
    """Write one field set of a shard group (samples in the group's order); returns its catalogue row."""
    path = shard_path(root, group.split, group.tier, kind, ids, group.idx)
    n_bytes, sha = write_shard(path, kind, samples)
    field_ids = {"codec_id": ids["codec_id"]} if kind == "tokens" else \
        {"features_id": ids["features_id"], "augment_id": ids["augment_id"]}
    return ShardRow(path=path, split=group.split, tier=group.tier, n_samples=len(samples), n_bytes=n_bytes,
                    sha256=sha, run_id=run_id, kind=kind, group_id=group.id, **field_ids)


def remove_partial(root: str) -> int:
    """Delete ``*.tar.tmp`` (and ``*.idx.tmp``) left by an interrupted run; returns how many."""
    n = 0
    for path in _files(root):
        if path.endswith(".tar.tmp") or path.endswith(INDEX_SUFFIX + ".tmp"):
            fs.remove(path)
            n += 1
    return n


def remove_unregistered(root: str, registered: Iterable[str]) -> int:
    """Delete shard files (and their indexes) that no catalogue row records; returns how many shards.

    A job killed between a worker's upload or rename and the driver's catalogue insert leaves a whole
    shard that the catalogue does not know. Its group still lacks that field set, so the next run writes
    it again at the same path; until then the orphan would be a stray copy for anyone who lists the folder.
    """
    known = {_canonical(p) for p in registered}
    n = 0
    for path in _files(root):
        tar = path[: -len(INDEX_SUFFIX)] if path.endswith(INDEX_SUFFIX) else path
        if SHARD_RE.search(tar) and _canonical(tar) not in known:
            fs.remove(path)
            n += path == tar
    return n


def _canonical(path: str) -> str:
    return path if fs.is_uri(path) else os.path.realpath(path)


def _files(root: str) -> list[str]:
    """Every file under ``root`` (a local path or a URI), as paths of the same kind; [] if it is absent."""
    filesystem, inner = fs.resolve(root)
    if not fs.isdir(root):
        return []
    import pyarrow.fs as pafs

    infos = filesystem.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    prefix = str(root).rstrip("/")
    inner = inner.rstrip("/")
    return [prefix + info.path[len(inner):] for info in infos if info.type == pafs.FileType.File]


class ShardSink:
    """Buffers finished samples per (split, tier) and writes each full group as both field sets.

    For tests and benchmarks that build shards without Ray (``pipelines.run`` writes groups in workers).

    Args:
        root: shard root (local path or URI).
        config: shard size and which splits keep audio.
        register: called with ``(ShardRow, keys, ShardGroupRow)`` for each written shard (the catalogue
            insert, e.g. ``Catalogue.register_shard``).
        ids: codec_id, features_id and augment_id of the samples.
    """

    def __init__(self, root: str | os.PathLike, config: ShardConfig,
                 register: Callable[[ShardRow, list[str], ShardGroupRow], Any], ids: dict[str, str],
                 run_id: str = ""):
        self.root, self.config, self.register, self.ids, self.run_id = str(root), config, register, ids, run_id
        self.buffers: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.written: list[ShardRow] = []
        self._next: dict[tuple[str, str], int] = {}

    def add(self, sample: dict[str, Any]) -> None:
        """``sample``: key, tokens, feats, meta (with split, tier, n_frames) and optional flac bytes."""
        key = (sample["meta"]["split"], sample["meta"]["tier"])
        buf = self.buffers.setdefault(key, [])
        buf.append(sample)
        if len(buf) >= self.config.samples_per_shard:
            self._flush(key)

    def close(self) -> list[ShardRow]:
        """Write every non-empty buffer as a final (smaller) group."""
        for key in sorted(self.buffers):
            if self.buffers[key]:
                self._flush(key)
        return self.written

    def _flush(self, key: tuple[str, str]) -> None:
        samples = sorted(self.buffers.pop(key), key=lambda s: s["key"])  # order inside a group: by key
        idx = self._next.get(key, 0)
        self._next[key] = idx + 1
        group = ShardGroupRow(split=key[0], tier=key[1], idx=idx, n_samples=len(samples))
        for kind in KINDS:
            row = write_group_field(self.root, kind, group, field_samples(kind, samples, self.ids), self.ids,
                                    self.run_id)
            self.register(row, [s["key"] for s in samples], group)
            self.written.append(row)


def field_samples(kind: str, samples: list[dict[str, Any]], ids: dict[str, str]) -> list[dict[str, Any]]:
    """The part of each full sample (tokens + feats + excerpt metadata) that a field set stores."""
    if kind == "tokens":
        other = ("features_id", "augment_id")  # the token field set does not depend on them
        return [{"key": s["key"], "tokens": s["tokens"], "flac": s.get("flac"),
                 "meta": {**{k: v for k, v in s["meta"].items() if k not in other}, "codec_id": ids["codec_id"]}}
                for s in samples]
    return [{"key": s["key"], "feats": s["feats"],
             "meta": {"key": s["key"], "features_id": ids["features_id"], "augment_id": ids["augment_id"]}}
            for s in samples]
