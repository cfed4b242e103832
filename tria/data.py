"""Streaming reader of TRIA WebDataset shards: elastic, deterministic, resumable.

The shard format is the contract in the pipeline's shard writer (``pipelines.stages.shard``): one sample
per drum excerpt, stored as two field sets of one shard group with the same keys in the same order: a
token tar (``<key>.tokens.npy`` int16 (K, T), ``<key>.json`` metadata with ``tier`` and ``n_frames``, an
optional ``<key>.flac`` that the trainer never reads) and a prompt tar (``<key>.feats.npy`` float16
(V, n_bands, T): V augmented rhythm prompts aligned to the T token frames). A :class:`ShardSpec` names the
token tar (``url``) and the prompt tar (``prompts``); the reader zips them sample by sample and refuses a
pair whose keys differ. A spec without ``prompts`` reads both fields from one tar.

Beside each tar the pipeline writes ``<tar>.idx`` (JSON: keys, ``n_frames``, tiers, and each array's
byte offset, dtype and shape, plus the tar's size and sha256). With it a sample costs two positioned reads
(the tokens, and only the feature variant used) and two ``np.frombuffer``; no tar or ``.npy`` header is
parsed. An index that is missing, or does not match the file's size or the catalogue's sha256, is
ignored and the reader walks the tar headers instead (same samples, about 10x the CPU).

How the order is defined (the part that makes it elastic)
---------------------------------------------------------
For one epoch the reader defines a single *global order* ``O`` of all the epoch's samples, which depends
only on ``(shard list, seed, epoch, shuffle_buffer, interleave, epoch_size)``, never on the number of
ranks, DataLoader workers or the batch size:

1. **Segments.** Each shard (or, with stream mixing, each repeat or prefix of a shard) is a segment. The
   segment list is permuted with ``RNG(seed, epoch)``: a new shard order every epoch.
2. **Read sequence S.** Consecutive groups of ``interleave`` segments are read side by side, round robin
   (sample 0 of each, then sample 1 of each, ...), so that a window of S mixes several shards while each
   shard is still read front to back.
3. **Block shuffle.** S is cut into windows of ``shuffle_buffer`` samples and each window is permuted with
   ``RNG(seed, epoch, window)``. ``O`` is the concatenation of the permuted windows. This is the bounded
   shuffle buffer: it never moves a sample further than one window. A classic streaming shuffle buffer
   (fill, pick at random, refill) cannot be elastic because its output depends on the order in which the
   samples reach each consumer, which depends on how the shards are split between consumers.

Global step ``s`` (counted from the position the iteration started at, ``p0``) is the global batch
``O[p0 + s*G : p0 + (s+1)*G]`` with ``G = batch_size * world_size``. Its samples are sorted by their index
in S and rank ``r`` takes the ``r``-th slice of ``batch_size``: each rank then reads about ``1/world_size``
of every window instead of all of it (read locality, as MosaicML Streaming's per-node partitions). Within
a rank, DataLoader worker ``w`` of ``W`` produces the steps ``s`` with ``s % W == w``; a PyTorch DataLoader
collects batches from its workers round robin, so the rank sees steps 0, 1, 2, ... in order.

Workers that persist across epochs
----------------------------------
:class:`ShardLoader` does not restart its workers at each epoch. Its workers iterate one endless stream:
the steps of the current epoch from the start position, then every step of the next epoch, and so on.
Stream step ``j`` (counted from the start, across epochs) is produced by worker ``j % W``, so the round
robin stays aligned when an epoch's step count does not divide by ``W``, and an epoch boundary costs no
drain and no worker start-up. The start ``(epoch, position)`` reaches the workers through a small
shared-memory tensor that the loader writes before it (re)starts them (``persistent_workers=True`` keeps
the processes; their dataset copies are never updated). The loader splits the stream back into epochs
by the stamps, so the order and every property above are those of the plain per-epoch iteration.

Consequences, all tested: every sample of the epoch is produced exactly once over all ranks and workers
(the last partial global batch is split as evenly as possible, or dropped with ``drop_last``); the global
batch of step ``s`` is the same list of samples for any ``world_size`` and any number of workers as long
as ``G`` is the same; and the order does not depend on ``G`` at all, so a resumed run may even change its
global batch size and still continue the same sequence.

Position and resume
-------------------
``position`` counts samples of ``O`` that belong to global steps the training loop has *received*, over
all ranks: after step ``s`` it is ``min(p0 + (s+1)*G, N)``. Every batch carries ``epoch`` and ``position``
(the value after that step). With DataLoader workers, the dataset object in the main process never runs
``__iter__``; its position is advanced by :class:`ShardLoader`, which copies the stamp of each batch it
hands to the caller. Batches that workers have prefetched but the loop has not received are not counted,
so after a restart they are produced again: the restarted reader gives exactly the next samples. Ranks
step in lockstep under DDP, so rank 0's ``state_dict()`` is valid for every rank (and for another world
size). ``state_dict()`` is ``{"epoch", "position", "seed", "fingerprint", "version"}``; the fingerprint
guards against resuming onto a different shard list or shuffle settings.

Memory
------
A worker decodes only the samples of its own steps, one window at a time, and holds at most
``batch_size * ceil((ceil(shuffle_buffer / G) + 1) / W)`` decoded samples (counted in ``peak_held``),
whatever the number of shards. The epoch plan holds one small record per segment, never one per sample,
except the permutation of the current window. A DataLoader adds ``prefetch_factor * W`` batches (in
shared memory, ``/dev/shm``; see :class:`ShardLoader` for the default).

Cost of elasticity: without an index, every worker of a rank walks the tar headers of that rank's part of
each window (samples of other workers are skipped, not decoded, and not even read when the file is
seekable), so a rank parses about ``W`` times the headers it needs; with the index a worker reads only
its own samples. Collation copies each sample into preallocated arrays in its stored dtypes and converts
once per batch (``benchmarks.stall`` prints the reader's ms/sample).

Why the stdlib ``tarfile`` and not ``webdataset``: the reader must decide, per sample index, whether to
decode a sample (most samples of a window belong to other consumers) and must continue a shard across
windows from where it stopped. A forward cursor over ``tarfile`` members does both in a few lines, skips
unwanted members without decoding them (and without reading them when the file is seekable), and keeps
the failure handling of a corrupt shard in one place. ``webdataset``'s pipelines decode every sample of the
shards a worker is given, which is exactly what this design avoids.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import tarfile
import zlib
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

logger = logging.getLogger(__name__)

TIERS: tuple[str, ...] = ("isolated", "separated", "synthetic")
"""Quality tiers; ``tier_id`` in a batch is the index in this tuple."""
_TIER_ID = {t: i for i, t in enumerate(TIERS)}

_STATE_VERSION = 1
_NEEDED_MEMBERS = ("tokens.npy", "feats.npy", "json")


class ShardError(Exception):
    """A shard that cannot be read (missing, truncated, bad checksum, undecodable member)."""


@dataclass(frozen=True)
class ShardSpec:
    """One shard as the catalogue describes it.

    Attributes:
        url: Local path, or a URI with a scheme that ``pyarrow.fs.FileSystem.from_uri`` opens
            (``file://``, ``s3://``, ``gs://``, ``hdfs://``...).
        n_samples: Number of samples in the shard.
        sha256: Hex digest of the whole file; checked only when ``ReaderConfig.verify_checksums``.
        stream: Name of the stream (source) the shard belongs to, for weighted mixing.
        weight: Mixing weight of that stream; every shard of a stream must carry the same weight.
        prompts: The prompt shard of the same group (same keys, same order) that gives the features;
            None when ``url`` holds the features too.
        prompts_sha256: Hex digest of the prompt shard.
    """

    url: str
    n_samples: int
    sha256: str | None = None
    stream: str = "default"
    weight: float | None = None
    prompts: str | None = None
    prompts_sha256: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ValueError(f"shard url must be a non-empty string, got {self.url!r}")
        if isinstance(self.n_samples, bool) or not isinstance(self.n_samples, int) or self.n_samples < 0:
            raise ValueError(f"shard {self.url}: n_samples must be an int >= 0, got {self.n_samples!r}")
        if self.weight is not None and not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"shard {self.url}: weight must be finite and >= 0, got {self.weight!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardSpec:
        """Builds a spec from a mapping with ``url`` (or ``path``), ``n_samples`` and optional fields."""
        url = d.get("url", d.get("path"))
        if url is None or "n_samples" not in d:
            raise ValueError(f"a shard descriptor needs 'url' (or 'path') and 'n_samples', got {dict(d)}")
        weight = d.get("weight")
        return cls(
            url=str(url),
            n_samples=int(d["n_samples"]),
            sha256=d.get("sha256"),
            stream=str(d.get("stream", "default")),
            weight=None if weight is None else float(weight),
            prompts=d.get("prompts"),
            prompts_sha256=d.get("prompts_sha256"),
        )


@dataclass(frozen=True)
class ReaderConfig:
    """Options of :class:`ShardDataset`.

    Attributes:
        batch_size: Samples per batch on ONE rank; the global batch is ``batch_size * world_size``.
        seed: Shuffle seed; the order is a function of (seed, epoch).
        shuffle: Permute shards and windows; False reads the shards in the given order (validation).
        shuffle_buffer: Window of the block shuffle, in samples of the global order.
        interleave: Number of shards read side by side to fill a window (1: one shard after another).
        epoch_size: Samples per epoch when streams are mixed by weight; default: all samples.
        drop_last: Drop the last, partial global batch (keeps DDP ranks in lockstep).
        verify_checksums: Hash each shard before reading it and skip it on a sha256 mismatch.
    """

    batch_size: int
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 2048
    interleave: int = 8
    epoch_size: int | None = None
    drop_last: bool = True
    verify_checksums: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "shuffle_buffer", "interleave"):
            if getattr(self, name) < 1:
                raise ValueError(f"ReaderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise ValueError(f"ReaderConfig.epoch_size must be >= 1, got {self.epoch_size}")


# --------------------------------------------------------------------------------------------------------
# Epoch plan: pure index arithmetic, no I/O.


def _rng(*keys: int) -> np.random.Generator:
    # SeedSequence of a tuple: independent, platform-stable streams per (seed, epoch, purpose, ...).
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


def _stream_quotas(shards: Sequence[ShardSpec], epoch_size: int) -> dict[str, int]:
    """Samples per stream in one epoch: ``epoch_size`` split by weight (largest remainder)."""
    weights: dict[str, float] = {}
    for spec in shards:
        if spec.weight is None:
            raise ValueError(f"shard {spec.url} has no weight, but other shards do: give every stream one")
        if weights.setdefault(spec.stream, spec.weight) != spec.weight:
            raise ValueError(f"stream {spec.stream!r} has shards with different weights")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("stream weights sum to 0")
    names = sorted(weights)
    exact = [epoch_size * weights[n] / total for n in names]
    quotas = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(names)), key=lambda i: (quotas[i] - exact[i], i))
    for i in by_remainder[: epoch_size - sum(quotas)]:
        quotas[i] += 1
    return dict(zip(names, quotas, strict=True))


def _mixed_segments(shards: Sequence[ShardSpec], epoch_size: int, rng: np.random.Generator) -> list[tuple]:
    """Segments (shard, start, length) giving each stream its quota: whole repeats, then a random part."""
    segments: list[tuple[int, int, int]] = []
    for name, quota in _stream_quotas(shards, epoch_size).items():
        members = [i for i, s in enumerate(shards) if s.stream == name and s.n_samples > 0]
        available = sum(shards[i].n_samples for i in members)
        if quota > 0 and available == 0:
            raise ValueError(f"stream {name!r} has weight > 0 but no samples")
        if quota == 0:
            continue
        repeats, rest = divmod(quota, available)
        segments += [(i, 0, shards[i].n_samples) for _ in range(repeats) for i in members]
        for i in rng.permutation(members):  # the remainder: whole shards in random order, last one cut
            if rest == 0:
                break
            take = min(rest, shards[int(i)].n_samples)
            segments.append((int(i), 0, take))
            rest -= take
    return segments


class _EpochPlan:
    """The global order of one epoch, as segments, interleaving groups and shuffle windows."""

    def __init__(self, shards: Sequence[ShardSpec], cfg: ReaderConfig, epoch: int, mixing: bool) -> None:
        self.cfg, self.epoch = cfg, epoch
        rng = _rng(cfg.seed, epoch, 0)
        if mixing:
            segs = _mixed_segments(shards, cfg.epoch_size or sum(s.n_samples for s in shards), rng)
        else:
            segs = [(i, 0, s.n_samples) for i, s in enumerate(shards) if s.n_samples > 0]
        if cfg.shuffle:
            segs = [segs[int(i)] for i in rng.permutation(len(segs))]
        arr = np.asarray(segs, dtype=np.int64).reshape(-1, 3)
        self.seg_shard, self.seg_start, self.seg_len = arr[:, 0], arr[:, 1], arr[:, 2]
        starts = np.arange(0, len(arr), cfg.interleave)
        group_len = np.add.reduceat(self.seg_len, starts) if len(arr) else np.zeros(0, np.int64)
        self.group_offset = np.concatenate([[0], np.cumsum(group_len)]).astype(np.int64)
        self.n_samples = int(self.group_offset[-1])
        self._groups: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._windows: dict[int, np.ndarray] = {}

    def _group(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """(segment index, offset in segment) of each sample of group g, round robin over its segments."""
        if g not in self._groups:
            first = g * self.cfg.interleave
            lens = self.seg_len[first : first + self.cfg.interleave]
            seg = np.repeat(np.arange(first, first + len(lens)), lens)
            t = np.concatenate([np.arange(n) for n in lens])
            order = np.lexsort((seg, t))  # by t, then by segment: sample t of every shard, then t + 1
            if len(self._groups) >= 4:  # only the groups around the reading point are needed
                self._groups.pop(next(iter(self._groups)))
            self._groups[g] = (seg[order], t[order])
        return self._groups[g]

    def locate(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Maps S indices (sorted) to (segment index, index in the shard, group index)."""
        groups = np.searchsorted(self.group_offset, s, side="right") - 1
        seg, pos = np.empty_like(s), np.empty_like(s)
        for g in np.unique(groups):
            sel = groups == g
            g_seg, g_t = self._group(int(g))
            local = s[sel] - self.group_offset[g]
            seg[sel] = g_seg[local]
            pos[sel] = self.seg_start[g_seg[local]] + g_t[local]
        return seg, pos, groups

    def _window(self, k: int) -> np.ndarray:
        if k not in self._windows:
            L = self.cfg.shuffle_buffer
            n = min(L, self.n_samples - k * L)
            perm = _rng(self.cfg.seed, self.epoch, 1, k).permutation(n) if self.cfg.shuffle else np.arange(n)
            if len(self._windows) >= 2:
                self._windows.pop(next(iter(self._windows)))
            self._windows[k] = k * L + perm
        return self._windows[k]

    def s_indices(self, a: int, e: int) -> np.ndarray:
        """S indices of the global-order positions [a, e)."""
        L = self.cfg.shuffle_buffer
        parts = [
            self._window(k)[max(a, k * L) - k * L : min(e, (k + 1) * L) - k * L]
            for k in range(a // L, (e - 1) // L + 1)
        ]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)


# --------------------------------------------------------------------------------------------------------
# Reading: one shard's samples, in increasing index order, through its index or by walking tar headers.


def open_binary(url: str) -> BinaryIO:
    """Opens a local path, or a URI through ``pyarrow.fs`` (any scheme pyarrow knows)."""
    if "://" in url:
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(url)
        return fs.open_input_stream(path)  # buffered, sequential: the right access for object storage
    return open(url, "rb")


def _sha256(url: str) -> str:
    h = hashlib.sha256()
    with open_binary(url) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _forget_members(tar: tarfile.TarFile) -> None:
    """Drops the headers tarfile keeps of every member seen: a long shard would grow memory otherwise."""
    tar.members = []  # type: ignore[attr-defined]  # the list is an implementation detail, long stable


def _split_name(name: str) -> tuple[str, str]:
    """``dir/<key>.<suffix>`` -> (key, suffix); keys contain no dots by contract."""
    key, _, suffix = os.path.basename(name).partition(".")
    return key, suffix


class _HeaderWalk:
    """Reads chosen samples of a tar by walking its headers, decoding nothing else (no index needed)."""

    def __init__(self, url: str, suffixes: tuple[str, ...]) -> None:
        self.url, self.suffixes = url, suffixes
        self._file = open_binary(url)
        seekable = bool(getattr(self._file, "seekable", lambda: False)())
        # "r:" lets tarfile seek past unwanted members; "r|" reads through them on plain streams.
        self._tar = tarfile.open(fileobj=self._file, mode="r:" if seekable else "r|")
        self._target = -1
        self._walk = self._samples()

    def _samples(self) -> Iterator[tuple[int, str, dict[str, bytes]]]:
        index, key = -1, ""
        parts: dict[str, bytes] | None = None
        for info in self._tar:
            _forget_members(self._tar)
            if not info.isfile():
                continue
            k, suffix = _split_name(info.name)
            if k != key:
                if parts is not None:
                    yield index, key, parts
                index, key = index + 1, k
                parts = {} if index == self._target else None
            member = self._tar.extractfile(info) if parts is not None and suffix in self.suffixes else None
            if parts is not None and member is not None:
                parts[suffix] = member.read()
        if parts is not None:
            yield index, key, parts
        self.n_seen = index + 1

    def get(self, index: int) -> tuple[str, dict[str, Any]]:
        """(key, members) of sample ``index``: arrays decoded from ``.npy``, ``json`` parsed."""
        self._target = index
        found, key, raw = next(self._walk)
        if found != index:
            raise ShardError(f"sample {index} expected, found {found}")
        parts: dict[str, Any] = {}
        try:
            for suffix, data in raw.items():
                if suffix.endswith(".npy"):
                    parts[suffix] = np.load(io.BytesIO(data), allow_pickle=False)
                elif suffix == "json":
                    meta = json.loads(data.decode("utf-8"))
                    parts.update(n_frames=meta.get("n_frames"), tier=meta.get("tier"))
        except (ValueError, OSError, EOFError, UnicodeDecodeError) as e:
            raise ShardError(f"sample {key!r} does not decode: {type(e).__name__}: {e}") from e
        parts["json"] = "json" in raw
        return key, parts

    def close(self) -> None:
        self._tar.close()
        self._file.close()


class _Indexed:
    """Reads chosen samples of a tar through the index the pipeline writes beside it (``<tar>.idx``).

    The index gives each sample's key, ``n_frames`` and tier, and each array's byte offset, dtype and shape,
    so a sample costs one positioned read per array (of only the feature variant used) and a
    ``np.frombuffer``: no tar header or ``.npy`` header is parsed.
    """

    def __init__(self, url: str, index: dict[str, Any], suffixes: tuple[str, ...]) -> None:
        self.url, self.keys = url, index["keys"]
        self.arrays = {s: index["arrays"][s] for s in suffixes if s.endswith(".npy") and s in index["arrays"]}
        self.meta = index.get("meta", {})
        self._fd, self._file = _open_random(url)

    def get(self, index: int) -> tuple[str, dict[str, Any]]:
        parts: dict[str, Any] = {s: entries[index] for s, entries in self.arrays.items()}  # (offset, dtype, shape)
        if "n_frames" in self.meta:
            parts.update(n_frames=self.meta["n_frames"][index], tier=self.meta["tier"][index], json=True)
        return self.keys[index], parts

    def read(self, entry: Sequence[Any], first: int | None = None) -> np.ndarray:
        """The array of an index entry; with ``first``, only ``array[first]``."""
        offset, dtype, shape = entry
        dt = _DTYPES.get(dtype) or _DTYPES.setdefault(dtype, np.dtype(dtype))
        if first is not None:
            rest = shape[1:]
            n = dt.itemsize * math.prod(rest)
            offset, shape = offset + first * n, rest
        else:
            n = dt.itemsize * math.prod(shape)
        data = os.pread(self._fd, n, offset) if self._fd is not None else self._file.read_at(n, offset)
        if len(data) != n:
            raise ShardError(f"{self.url}: {len(data)} of {n} bytes at offset {offset}: truncated?")
        return np.frombuffer(data, dtype=dt).reshape(shape)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        else:
            self._file.close()


def _open_random(url: str) -> tuple[int | None, Any]:
    """A local file descriptor (for ``os.pread``), or a pyarrow random-access file for a URI."""
    if "://" not in url:
        return os.open(url, os.O_RDONLY), None
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(url)
    return None, fs.open_input_file(path)


INDEX_FORMAT = "tria-shard-index/1"
_DTYPES: dict[str, np.dtype] = {}


def _load_index(url: str, sha256: str | None) -> dict[str, Any] | None:
    """The index beside a tar, or None when there is none or it does not describe this file (then the
    reader walks the headers). The index records the tar's size and sha256: both must match the file's
    size and the catalogue's digest (when known)."""
    try:
        with open_binary(url + ".idx") as f:
            index = json.loads(f.read())
        if index.get("format") != INDEX_FORMAT or (sha256 and index.get("sha256") != sha256.lower()):
            return None
        size = os.stat(url).st_size if "://" not in url else _uri_size(url)
        return index if index.get("tar_bytes") == size else None
    except (OSError, ValueError):
        return None


def _uri_size(url: str) -> int:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(url)
    return int(fs.get_file_info(path).size or -1)


def _open_tar(url: str, sha256: str | None, suffixes: tuple[str, ...]) -> _Indexed | _HeaderWalk:
    index = _load_index(url, sha256)
    return _Indexed(url, index, suffixes) if index is not None else _HeaderWalk(url, suffixes)


class _ShardCursor:
    """Chosen samples of one shard (a token tar, zipped with its prompt tar), in increasing index order.

    Decodes only the samples asked for, and of the K feature variants only the one this epoch uses.
    """

    def __init__(self, spec: ShardSpec, seed: int, epoch: int) -> None:
        self.spec, self.seed, self.epoch = spec, seed, epoch
        self._target = -1
        self._tars: list[_Indexed | _HeaderWalk] = []
        if spec.prompts is None:  # one tar holds both fields
            self._tars.append(_open_tar(spec.url, spec.sha256, _NEEDED_MEMBERS))
        else:
            self._tars.append(_open_tar(spec.url, spec.sha256, ("tokens.npy", "json")))
            self._tars.append(_open_tar(spec.prompts, spec.prompts_sha256, ("feats.npy",)))
        tokens, feats = self._tars[0], self._tars[-1]
        self._indexed = (isinstance(tokens, _Indexed) and isinstance(feats, _Indexed) and "n_frames" in tokens.meta
                         and "tokens.npy" in tokens.arrays and "feats.npy" in feats.arrays)

    def _get_indexed(self, index: int) -> dict[str, Any]:
        """The fast path: both tars have an index (two positioned reads, no header parsed)."""
        tok_tar, feat_tar = self._tars[0], self._tars[-1]
        if index >= len(tok_tar.keys) or index >= len(feat_tar.keys):
            raise ShardError(f"its index has no sample {index} ({self.spec.n_samples} declared)")
        key = tok_tar.keys[index]
        if feat_tar.keys[index] != key:
            raise ShardError(f"sample {index}: token key {key!r} != prompt key {feat_tar.keys[index]!r}: "
                             "the token and prompt shards are not aligned")
        tok_entry, feat_entry = tok_tar.arrays["tokens.npy"][index], feat_tar.arrays["feats.npy"][index]
        if len(tok_entry[2]) != 2 or len(feat_entry[2]) != 3 or feat_entry[2][0] < 1 \
                or feat_entry[2][2] != tok_entry[2][1]:
            raise ShardError(f"sample {key!r}: tokens {tok_entry[2]} / feats {feat_entry[2]} do not match the format")
        # A stable hash (not Python's salted hash()) so every process and restart picks the same variant.
        variant = zlib.crc32(f"{self.seed}:{self.epoch}:{key}".encode()) % feat_entry[2][0]
        tokens, feats = tok_tar.read(tok_entry), feat_tar.read(feat_entry, first=variant)
        tier, n_frames = tok_tar.meta["tier"][index], tok_tar.meta["n_frames"][index]
        if tier not in _TIER_ID or not isinstance(n_frames, int) or not 0 < n_frames <= tok_entry[2][1]:
            raise ShardError(f"sample {key!r}: bad metadata tier={tier!r} n_frames={n_frames!r}")
        return {"key": key, "tokens": tokens, "feats": feats, "n_frames": n_frames, "tier": tier}

    def get(self, index: int) -> dict[str, Any]:
        """The decoded sample ``index``; raises ShardError when it cannot be read."""
        if index <= self._target:
            raise ValueError(f"cursor on {self.spec.url} moves forward only ({index} <= {self._target})")
        self._target = index
        if self._indexed:
            return self._get_indexed(index)
        try:
            found = [tar.get(index) for tar in self._tars]
        except StopIteration:
            raise ShardError(
                f"ends before sample {index} ({self.spec.n_samples} declared): truncated?"
            ) from None
        except IndexError:
            raise ShardError(f"its index has no sample {index} ({self.spec.n_samples} declared)") from None
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise ShardError(f"{type(e).__name__}: {e}") from e
        key = found[0][0]
        if any(k != key for k, _ in found):
            raise ShardError(f"sample {index}: token key {key!r} != prompt key {found[-1][0]!r}: "
                             "the token and prompt shards are not aligned")
        tokens_tar, feats_tar = self._tars[0], self._tars[-1]
        tokens_part, feats_part = found[0][1].get("tokens.npy"), found[-1][1].get("feats.npy")
        meta = found[0][1]
        if tokens_part is None or feats_part is None or not meta.get("json"):
            missing = [m for m, v in (("tokens.npy", tokens_part), ("feats.npy", feats_part),
                                      ("json", meta.get("json") or None)) if v is None]
            raise ShardError(f"sample {key!r} lacks members {missing}")
        try:
            tokens = tokens_part if isinstance(tokens_part, np.ndarray) else tokens_tar.read(tokens_part)
            n_variants = (feats_part.shape if isinstance(feats_part, np.ndarray) else feats_part[2])[0]
            if n_variants < 1:
                raise ShardError(f"sample {key!r} has no feature variant")
            # A stable hash (not Python's salted hash()) so every process and restart picks the same variant.
            variant = zlib.crc32(f"{self.seed}:{self.epoch}:{key}".encode()) % n_variants
            if isinstance(feats_part, np.ndarray):
                if feats_part.ndim != 3:
                    raise ShardError(f"sample {key!r}: feats {feats_part.shape} do not match the format")
                feats = feats_part[variant]
            else:
                if len(feats_part[2]) != 3:
                    raise ShardError(f"sample {key!r}: feats {feats_part[2]} do not match the format")
                feats = feats_tar.read(feats_part, first=variant)
        except (ValueError, OSError) as e:
            raise ShardError(f"sample {key!r} does not decode: {type(e).__name__}: {e}") from e
        if tokens.ndim != 2 or feats.shape[1] != tokens.shape[1]:
            raise ShardError(f"sample {key!r}: tokens {tokens.shape} / feats {feats.shape} do not match the format")
        tier, n_frames = meta.get("tier"), meta.get("n_frames")
        if tier not in TIERS or not isinstance(n_frames, int) or not 0 < n_frames <= tokens.shape[1]:
            raise ShardError(f"sample {key!r}: bad metadata tier={tier!r} n_frames={n_frames!r}")
        return {"key": key, "tokens": tokens, "feats": feats, "n_frames": n_frames, "tier": tier}

    def close(self) -> None:
        for tar in self._tars:
            tar.close()


class _Fetcher:
    """Decodes samples at sorted S indices, keeping at most one open cursor per interleaved shard."""

    def __init__(self, plan: _EpochPlan, shards: Sequence[ShardSpec], cfg: ReaderConfig) -> None:
        self.plan, self.shards, self.cfg = plan, shards, cfg
        self._cursors: dict[int, _ShardCursor] = {}
        self._group = -1
        self._bad: set[int] = set()
        self._verified: set[int] = set()

    def fetch(self, s_sorted: np.ndarray) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """Yields (S index, sample or None when its shard is unreadable)."""
        if len(s_sorted) == 0:
            return
        segs, positions, groups = self.plan.locate(s_sorted)
        for s, seg, pos, g in zip(
            s_sorted.tolist(), segs.tolist(), positions.tolist(), groups.tolist(), strict=True
        ):
            if g != self._group:  # groups are read in order: the previous group's shards are done
                self.close()
                self._group = g
            yield s, self._read(seg, pos)

    def _read(self, seg: int, pos: int) -> dict[str, Any] | None:
        shard = int(self.plan.seg_shard[seg])
        if shard in self._bad:
            return None
        try:
            self._check(shard)
            if seg not in self._cursors:
                self._cursors[seg] = _ShardCursor(self.shards[shard], self.cfg.seed, self.plan.epoch)
            return self._cursors[seg].get(pos)
        except (ShardError, OSError, tarfile.TarError) as e:
            self._bad.add(shard)
            cursor = self._cursors.pop(seg, None)
            if cursor is not None:
                cursor.close()
            logger.warning("skipping unreadable shard %s: %s", self.shards[shard].url, e)
            return None

    def _check(self, shard: int) -> None:
        spec = self.shards[shard]
        if not self.cfg.verify_checksums or shard in self._verified:
            return
        for url, sha in ((spec.url, spec.sha256), (spec.prompts, spec.prompts_sha256)):
            if url is None or sha is None:
                continue
            digest = _sha256(url)
            if digest != sha.lower():
                raise ShardError(f"sha256 mismatch of {url}: file {digest[:16]}..., catalogue {sha[:16]}...")
        self._verified.add(shard)

    def close(self) -> None:
        for cursor in self._cursors.values():
            cursor.close()
        self._cursors.clear()


# --------------------------------------------------------------------------------------------------------
# Batches.


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pads decoded samples to the longest T of the batch and stacks them.

    Args:
        samples: Dicts with ``key`` (str), ``tokens`` (K, T_i) ints, ``feats`` (n_bands, T_i) floats,
            ``n_frames`` (int <= T_i, the valid frames) and ``tier`` (one of :data:`TIERS`).

    Returns:
        Dict with ``tokens`` LongTensor (B, K, T), ``feats`` FloatTensor (B, n_bands, T) (float32),
        ``lengths`` LongTensor (B,), ``tier`` list[str], ``tier_id`` LongTensor (B,) and ``keys`` list[str].
        Padding is 0 in tokens and feats; ``lengths`` says where each example's valid frames end.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    K, n_bands = samples[0]["tokens"].shape[0], samples[0]["feats"].shape[0]
    B, T = len(samples), max(s["tokens"].shape[1] for s in samples)
    # Preallocated in the samples' own dtypes (a plain copy each), then one vectorised conversion per batch.
    tokens = np.zeros((B, K, T), dtype=np.result_type(*(s["tokens"].dtype for s in samples)))
    feats = np.zeros((B, n_bands, T), dtype=np.result_type(*(s["feats"].dtype for s in samples)))
    lengths = np.empty(B, dtype=np.int64)
    tier_id = np.empty(B, dtype=np.int64)
    for b, s in enumerate(samples):
        tok, f = s["tokens"], s["feats"]
        if tok.shape[0] != K or f.shape[0] != n_bands:
            raise ValueError(
                f"sample {s['key']!r} has {tok.shape[0]} codebooks / {f.shape[0]} "
                f"bands, the batch has {K} / {n_bands}"
            )
        n = tok.shape[1]
        if f.shape[1] != n:
            raise ValueError(f"sample {s['key']!r}: tokens and feats differ in length")
        if s["tier"] not in _TIER_ID:
            raise ValueError(f"sample {s['key']!r}: unknown tier {s['tier']!r}; known: {TIERS}")
        tokens[b, :, :n] = tok
        feats[b, :, :n] = f
        lengths[b] = min(int(s["n_frames"]), n)
        tier_id[b] = _TIER_ID[s["tier"]]
    return {
        "tokens": torch.from_numpy(tokens).long(),
        "feats": torch.from_numpy(feats).float(),
        "lengths": torch.from_numpy(lengths),
        "tier": [s["tier"] for s in samples],
        "tier_id": torch.from_numpy(tier_id),
        "keys": [s["key"] for s in samples],
    }


def _empty_batch() -> dict[str, Any]:
    # Yielded (never collated) when a step has no sample for this rank, so that the DataLoader's round
    # robin over workers stays aligned with the step numbers; ShardLoader drops it after reading its stamp.
    return {
        "tokens": torch.zeros(0, 0, 0, dtype=torch.long),
        "feats": torch.zeros(0, 0, 0),
        "lengths": torch.zeros(0, dtype=torch.long),
        "tier": [],
        "tier_id": torch.zeros(0, dtype=torch.long),
        "keys": [],
    }


# --------------------------------------------------------------------------------------------------------
# The dataset.


class ShardDataset(IterableDataset):
    """One rank's view of the shard stream: yields collated batches of ``config.batch_size``.

    Use it through :class:`ShardLoader` (or ``DataLoader(ds, batch_size=None)``): the dataset batches
    itself because the step structure is what makes the order elastic. One ``iter()`` runs from the
    current position to the end of the current epoch; the next ``iter()`` starts the next epoch.

    Args:
        shards: Shard descriptors (:class:`ShardSpec` or mappings for ``ShardSpec.from_dict``).
        config: Reader options.
        rank: This process's rank in ``[0, world_size)``.
        world_size: Number of data-parallel ranks.
    """

    def __init__(
        self,
        shards: Sequence[ShardSpec | Mapping[str, Any]],
        config: ReaderConfig,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.shards = [s if isinstance(s, ShardSpec) else ShardSpec.from_dict(s) for s in shards]
        if not self.shards:
            raise ValueError("the shard list is empty")
        self.config, self.rank, self.world_size = config, rank, world_size
        self._mixing = any(s.weight is not None for s in self.shards)
        if self._mixing:
            _stream_quotas(self.shards, 1)  # validates weights now rather than in a worker
        elif config.epoch_size is not None:
            raise ValueError("epoch_size applies to weighted streams; give the shards stream weights")
        self.epoch_samples = _EpochPlan(self.shards, config, 0, self._mixing).n_samples
        if config.drop_last and self.epoch_samples < self.global_batch_size:
            raise ValueError(
                f"an epoch has {self.epoch_samples} samples, less than one global batch "
                f"({self.global_batch_size}) with drop_last: nothing would be read"
            )
        self._epoch, self._position = 0, 0
        self.peak_held = 0  # most decoded samples held at once by this process (memory instrumentation)
        self._held = 0

    @property
    def global_batch_size(self) -> int:
        return self.config.batch_size * self.world_size

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        """Samples of this epoch's global order consumed by received steps, over all ranks."""
        return self._position

    def set_epoch(self, epoch: int) -> None:
        """Starts ``epoch`` from its beginning at the next ``iter()``."""
        self._epoch, self._position = int(epoch), 0

    def steps_remaining(self) -> int:
        """Global steps left in the current epoch from the current position (the same on every rank)."""
        return self._steps_from(self._position)

    def _steps_from(self, position: int) -> int:
        left = max(self.epoch_samples - position, 0)
        G = self.global_batch_size
        return left // G if self.config.drop_last else -(-left // G)

    def fingerprint(self) -> str:
        """Hash of everything the global order depends on (not rank, workers or batch size)."""
        cfg = asdict(self.config)
        for k in ("batch_size", "drop_last", "verify_checksums"):
            cfg.pop(k)
        shards = [(s.url, s.n_samples, s.stream, s.weight) + ((s.prompts,) if s.prompts else ())
                  for s in self.shards]
        blob = json.dumps({"shards": shards, "config": cfg, "v": _STATE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """Small resume state: ``{"epoch", "position", "seed", "fingerprint", "version"}``."""
        return {
            "epoch": self._epoch,
            "position": self._position,
            "seed": self.config.seed,
            "fingerprint": self.fingerprint(),
            "version": _STATE_VERSION,
        }

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Continues from a saved position; the next ``iter()`` yields the steps after it.

        Args:
            state: A dict from :meth:`state_dict`, possibly saved with another world size or worker count.
            strict: Raise ValueError when the seed or the fingerprint differ (the order would not be the
                same); with False, only warn and keep (epoch, position).
        """
        missing = {"epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"reader state lacks {sorted(missing)}")
        problems = []
        if state.get("seed", self.config.seed) != self.config.seed:
            problems.append(f"seed {state['seed']} != {self.config.seed}")
        if state.get("fingerprint", self.fingerprint()) != self.fingerprint():
            problems.append("shard list or shuffle settings changed (fingerprint differs)")
        if problems and strict:
            raise ValueError("cannot resume the reader exactly: " + "; ".join(problems))
        for p in problems:
            logger.warning("resuming reader approximately: %s", p)
        position = int(state["position"])
        if not 0 <= position <= self.epoch_samples:
            raise ValueError(f"reader position {position} outside the epoch [0, {self.epoch_samples}]")
        self._epoch, self._position = int(state["epoch"]), position

    def _advance(self, epoch: int, position: int) -> None:
        if (epoch, position) > (self._epoch, self._position):
            self._epoch, self._position = epoch, position

    def _finish_epoch(self, epoch: int) -> None:
        if self._epoch == epoch:
            self._epoch, self._position = epoch + 1, 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self._epoch
        plan = _EpochPlan(self.shards, self.config, epoch, self._mixing)
        for batch in self._batches(plan, self._position, worker, n_workers):
            if info is None:  # in the main process the dataset itself is what the caller consumes
                self._advance(batch["epoch"], batch["position"])
            yield batch
        if info is None:
            self._finish_epoch(epoch)

    def _rank_slice(self, s_idx: np.ndarray) -> np.ndarray:
        """This rank's part of one global batch: sorted by S index, so ranks read disjoint regions."""
        s_idx, b = np.sort(s_idx), self.config.batch_size
        if len(s_idx) == self.global_batch_size:
            return s_idx[self.rank * b : (self.rank + 1) * b]
        return np.array_split(s_idx, self.world_size)[self.rank]

    def _batches(self, plan: _EpochPlan, p0: int, worker: int, n_workers: int) -> Iterator[dict[str, Any]]:
        """Batches of this (rank, worker): window by window, decode what the queued steps need, emit."""
        N, G, L = plan.n_samples, self.global_batch_size, self.config.shuffle_buffer
        left = max(N - p0, 0)
        steps = iter(range(worker, left // G if self.config.drop_last else -(-left // G), n_workers))
        next_step = next(steps, None)
        fetcher, held = _Fetcher(plan, self.shards, self.config), {}
        queue: deque[tuple[int, np.ndarray]] = deque()  # (end position, this rank's S indices)
        k = p0 // L
        try:
            while queue or next_step is not None:
                w_start, w_end = k * L, min((k + 1) * L, N)
                while next_step is not None and p0 + next_step * G < w_end:
                    a = p0 + next_step * G
                    e = min(a + G, N)
                    queue.append((e, self._rank_slice(plan.s_indices(a, e))))
                    next_step = next(steps, None)
                need = np.concatenate(
                    [m[(m >= w_start) & (m < w_end)] for _, m in queue] or [np.empty(0, int)]
                )
                for s, sample in fetcher.fetch(np.sort(need)):
                    held[s] = sample
                    self._held += 1
                    self.peak_held = max(self.peak_held, self._held)
                while queue and queue[0][0] <= w_end:
                    e, mine = queue.popleft()
                    got = [held.pop(s) for s in mine.tolist()]
                    self._held -= len(got)
                    samples = [x for x in got if x is not None]  # None: its shard was unreadable
                    batch = collate(samples) if samples else _empty_batch()
                    yield {**batch, "epoch": plan.epoch, "position": e}
                k += 1
        finally:
            fetcher.close()
            self._held = 0


# --------------------------------------------------------------------------------------------------------
# The loader that keeps the position.


class _EpochStream(IterableDataset):
    """A dataset's batches from a start ``(epoch, position)`` through every later epoch, without end.

    What :class:`ShardLoader` iterates. Its workers persist, so each (re)start reads the start from
    ``start``, a shared-memory tensor the loader writes first, never from the worker's copy of the
    dataset. Stream step ``j`` (from the start, across epochs) is produced by worker ``j % W``.
    """

    def __init__(self, dataset: ShardDataset, shared: bool) -> None:
        super().__init__()
        self.dataset = dataset
        self.start = torch.zeros(2, dtype=torch.int64)  # (epoch, position)
        if shared:  # seen by worker processes (one small shared-memory segment per loader)
            self.start.share_memory_()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        ds = self.dataset
        epoch, position = (int(v) for v in self.start.tolist())
        done = 0  # stream steps before this epoch's first: this worker's first step is (worker - done) % W
        while True:
            plan = _EpochPlan(ds.shards, ds.config, epoch, ds._mixing)
            yield from ds._batches(plan, position, (worker - done) % n_workers, n_workers)
            done += ds._steps_from(position)
            epoch, position = epoch + 1, 0


class ShardLoader:
    """A DataLoader over a :class:`ShardDataset` that records the position of the batches it delivers.

    Iterating runs the rest of the current epoch (from the saved position); the trainer loops
    ``while True: for batch in loader: ...`` to go on to the next epochs. The workers persist across
    epochs (see "Workers that persist across epochs" above): they read on into the next epoch while the
    loop finishes this one. Breaking out of the loop and iterating again continues after the last
    delivered batch. After ``load_state_dict`` or ``dataset.set_epoch`` the workers (the same processes)
    restart at the new position; batches they had prefetched are dropped.

    With ``device``, ``tokens`` and ``feats`` arrive on that device: copied from pinned memory with
    ``non_blocking=True`` on a side CUDA stream one batch ahead, so the copy of batch ``s + 1`` overlaps
    the step on batch ``s``. Small per-example fields (``lengths``, ``tier_id``) stay on the host, where
    the mask builder reads them. On a CPU device the same code runs and the copy is a no-op.

    Args:
        dataset: The rank's dataset.
        num_workers: DataLoader worker processes (0 reads in the calling process).
        prefetch_factor: Batches each worker prepares ahead (only with workers). A worker must read a
            whole shuffle window before it can finish the window's first step (the block shuffle spreads
            every step over the window), so the queue must last while it reads the next window. Default:
            a worker's share of one window's steps, ``ceil(ceil(shuffle_buffer / G) / W) + 1``, between 2 and
            16 (16 x 2 workers x 21 ms, a tria_tiny step on an H200, covers 0.67 s of reading). Queued
            batches live in ``/dev/shm``: in a container with a small one, lower this or enlarge it.
        pin_memory: Pin batches in host memory; default: when ``device`` is CUDA.
        skip_empty: Drop batches with no sample (a step whose samples were all in unreadable shards, or
            this rank's empty share of a tiny last batch). Under DDP an empty step on one rank only
            would desynchronise the ranks: keep ``drop_last`` and healthy shards, or set False and handle
            ``len(batch["keys"]) == 0`` in the loop.
        device: Where ``tokens`` and ``feats`` go (``None``: left where the DataLoader puts them).

    Example (one rank of a torchrun job)::

        specs = [ShardSpec(row.url, row.n_samples, row.sha256) for row in catalogue_rows]
        ds = ShardDataset(specs, ReaderConfig(batch_size=16, seed=cfg.seed), rank, world_size)
        loader = ShardLoader(ds, num_workers=4, device="cuda:0")
        loader.load_state_dict(ckpt["train_state"]["data"])   # when resuming
        while step < max_steps:
            for batch in loader:  # batch["tokens"] (B, 9, T), batch["feats"] (B, n_bands, T), ...
                ...
                if step % save_every == 0:  # rank 0 saves; the state is valid for every rank
                    train_state["data"] = loader.state_dict()
        loader.close()  # stops the workers
    """

    _TO_DEVICE = ("tokens", "feats")

    def __init__(
        self,
        dataset: ShardDataset,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        pin_memory: bool | None = None,
        skip_empty: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        self.dataset, self.skip_empty = dataset, skip_empty
        self.device = None if device is None else torch.device(device)
        cuda = self.device is not None and self.device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self._stream = _EpochStream(dataset, shared=num_workers > 0)
        self._loader = DataLoader(
            self._stream,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=cuda if pin_memory is None else pin_memory,
            persistent_workers=num_workers > 0,
            prefetch_factor=(prefetch_factor or _window_prefetch(dataset, num_workers)) if num_workers > 0 else None,
        )
        self._batches: Iterator[dict[str, Any]] | None = None  # the live stream
        self._ahead: dict[str, Any] | None = None  # its next batch, already on the way to the device
        self._resumes_at: tuple[int, int] | None = None  # (epoch, position) the live stream continues from

    @property
    def prefetch_factor(self) -> int | None:
        return self._loader.prefetch_factor

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ds = self.dataset
        epoch = ds.epoch
        if self._batches is None or self._resumes_at != (ds.epoch, ds.position):
            self._restart()
        while ds.epoch == epoch and ds.steps_remaining() > 0:
            batch = self._take()
            stamp = (epoch, min(ds.position + ds.global_batch_size, ds.epoch_samples))
            if (batch["epoch"], batch["position"]) != stamp:  # a bug, never a data problem
                raise RuntimeError(f"batch stamped {(batch['epoch'], batch['position'])}, expected {stamp}")
            ds._advance(*stamp)
            self._resumes_at = stamp
            if self.skip_empty and not batch["keys"]:
                continue
            yield batch
        if ds.epoch == epoch:
            ds._finish_epoch(epoch)
            self._resumes_at = (ds.epoch, ds.position)  # the stream goes on with the next epoch

    def _restart(self) -> None:
        ds = self.dataset
        self._stream.start.copy_(torch.tensor([ds.epoch, ds.position]))  # before the workers resume
        self._ahead = None
        self._batches = iter(self._loader)  # persistent workers: the same processes, restarted
        self._resumes_at = (ds.epoch, ds.position)

    def _take(self) -> dict[str, Any]:
        """The next batch, ready on the device; starts the copy of the one after it."""
        assert self._batches is not None
        batch = self._ahead if self._ahead is not None else self._to_device(next(self._batches))
        if self._copy_stream is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._copy_stream)
            for k in self._TO_DEVICE:  # the allocator must not reuse them before the step is done
                batch[k].record_stream(current)
        self._ahead = self._to_device(next(self._batches))
        return batch

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.device is None:
            return batch
        with torch.cuda.stream(self._copy_stream) if self._copy_stream is not None else contextlib.nullcontext():
            moved = {k: batch[k].to(self.device, non_blocking=True) for k in self._TO_DEVICE}
        return {**batch, **moved}

    def state_dict(self) -> dict[str, Any]:
        """The dataset's state after the last delivered batch (see :meth:`ShardDataset.state_dict`)."""
        return self.dataset.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        self.dataset.load_state_dict(state, strict=strict)

    def close(self) -> None:
        """Stops the worker processes (otherwise they live as long as this loader); iterating restarts them."""
        it = getattr(self._loader, "_iterator", None)  # DataLoader has no public way to stop persistent workers
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader._iterator = None
        self._batches, self._ahead, self._resumes_at = None, None, None


def _window_prefetch(dataset: ShardDataset, num_workers: int) -> int:
    """One worker's share of the steps of a shuffle window (plus one), between 2 and 16."""
    steps_per_window = -(-dataset.config.shuffle_buffer // dataset.global_batch_size)
    return min(16, max(2, -(-steps_per_window // num_workers) + 1))


def scan_shards(
    urls: Sequence[str], stream: str = "default", weight: float | None = None, checksum: bool = False
) -> list[ShardSpec]:
    """Builds descriptors by reading tar headers (when no catalogue is at hand: tests, local folders).

    Args:
        urls: Shard paths or URIs.
        stream: Stream name given to every shard.
        weight: Stream weight given to every shard.
        checksum: Also compute each file's sha256.

    Returns:
        One :class:`ShardSpec` per url, ``n_samples`` counted from the distinct keys.
    """
    specs = []
    for url in urls:
        keys: set[str] = set()
        with open_binary(url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                _forget_members(tar)
                if info.isfile():
                    keys.add(_split_name(info.name)[0])
        specs.append(ShardSpec(url, len(keys), _sha256(url) if checksum else None, stream, weight))
    return specs
