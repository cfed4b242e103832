"""Shard stage: WebDataset tars written atomically and registered in the catalogue (SHARDS.md).

Runs on the job driver (the single catalogue writer). Samples are grouped by (split, tier); a shard
is written to ``shard-NNNNNN.tar.tmp``, fsync'd, hashed, renamed, and only then recorded with the
keys it holds. A crash therefore leaves at most a ``.tmp`` file (removed on the next run), never a
truncated shard under a valid name nor a catalogue row for a shard that does not exist.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines.rows import ShardRow

SHARD_RE = re.compile(r"shard-(\d{6})\.tar$")


@dataclass(frozen=True)
class ShardConfig:
    samples_per_shard: int = 256
    flac_splits: tuple[str, ...] = ("val", "test")  # keep excerpt audio for listening/validation


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def sample_members(sample: dict[str, Any]) -> list[tuple[str, bytes]]:
    """Tar members of one sample, in a fixed order."""
    key = sample["key"]
    members = [(f"{key}.tokens.npy", _npy(sample["tokens"].astype(np.int16))),
               (f"{key}.feats.npy", _npy(sample["feats"].astype(np.float16))),
               (f"{key}.json", json.dumps(sample["meta"], sort_keys=True).encode())]
    if sample.get("flac"):
        members.append((f"{key}.flac", sample["flac"]))
    return members


def write_tar(path: Path, samples: list[dict[str, Any]]) -> tuple[int, str]:
    """Write ``samples`` to ``path`` atomically; returns ``(n_bytes, sha256)``."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for sample in samples:
                    for name, data in sample_members(sample):
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: same bytes again
                        tar.addfile(info, io.BytesIO(data))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        # A full disk (ENOSPC) or a lost mount: drop the partial file now, so the space comes back, and
        # name the shard in the error (the bare OSError says only "No space left on device").
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write shard {path} ({len(samples)} samples): {e.strerror or e}") \
            from e
    digest = hashlib.sha256()
    with open(tmp, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    n_bytes = tmp.stat().st_size
    os.replace(tmp, path)
    return n_bytes, digest.hexdigest()


class ShardSink:
    """Buffers finished samples per (split, tier) and writes full shards.

    Args:
        root: shard root; shards go to ``root/<split>/<tier>/shard-NNNNNN.tar``.
        config: shard size and which splits keep audio.
        register: called with ``(ShardRow, keys)`` after each rename (the catalogue insert).
        ids: codec/features/augment config ids recorded on each shard.
    """

    def __init__(self, root: str | Path, config: ShardConfig, register: Callable[[ShardRow, list[str]], Any],
                 ids: dict[str, str], run_id: str = ""):
        self.root = Path(root)
        self.config = config
        self.register = register
        self.ids = ids
        self.run_id = run_id
        self.buffers: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.written: list[ShardRow] = []
        self._next: dict[tuple[str, str], int] = {}

    def remove_partial(self) -> int:
        """Delete ``*.tar.tmp`` left by an interrupted run; returns how many."""
        n = 0
        for tmp in self.root.rglob("*.tar.tmp") if self.root.exists() else []:
            tmp.unlink()
            n += 1
        return n

    def remove_unregistered(self, registered: set[str]) -> int:
        """Delete shard files that no catalogue row records; returns how many.

        A driver killed between the rename and the catalogue insert leaves a whole shard that the
        catalogue does not know. Its excerpts are still pending, so the next run writes them again;
        the orphan would then be a second copy of those samples for anyone who lists the folder.
        """
        known = {os.path.realpath(p) for p in registered}
        n = 0
        for path in self.root.rglob("shard-*.tar") if self.root.exists() else []:
            if SHARD_RE.search(path.name) and os.path.realpath(path) not in known:
                path.unlink()
                n += 1
        return n

    def _next_index(self, split: str, tier: str) -> int:
        key = (split, tier)
        if key not in self._next:
            folder = self.root / split / tier
            used = [int(m.group(1)) for p in folder.glob("shard-*.tar") if (m := SHARD_RE.search(p.name))]
            self._next[key] = max(used, default=-1) + 1
        i = self._next[key]
        self._next[key] = i + 1
        return i

    def add(self, sample: dict[str, Any]) -> None:
        key = (sample["meta"]["split"], sample["meta"]["tier"])
        buf = self.buffers.setdefault(key, [])
        buf.append(sample)
        if len(buf) >= self.config.samples_per_shard:
            self._flush(key)

    def close(self) -> list[ShardRow]:
        """Write every non-empty buffer as a final (smaller) shard."""
        for key in sorted(self.buffers):
            if self.buffers[key]:
                self._flush(key)
        return self.written

    def _flush(self, key: tuple[str, str]) -> None:
        samples = sorted(self.buffers.pop(key), key=lambda s: s["key"])  # order inside a shard: by key
        split, tier = key
        path = self.root / split / tier / f"shard-{self._next_index(split, tier):06d}.tar"
        n_bytes, sha = write_tar(path, samples)
        row = ShardRow(path=str(path), split=split, tier=tier, n_samples=len(samples), n_bytes=n_bytes,
                       sha256=sha, codec_id=self.ids.get("codec_id", ""), features_id=self.ids.get("features_id", ""),
                       augment_id=self.ids.get("augment_id", ""), run_id=self.run_id)
        self.register(row, [s["key"] for s in samples])
        self.written.append(row)
