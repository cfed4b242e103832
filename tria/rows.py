"""Typed catalogue rows: one frozen dataclass per DuckDB table (see `sql/schema.sql`).

Every row has a stable, content-derived id (`row.id`), so writing the same row twice is an
idempotent upsert, never a duplicate. Workers build rows and return them; only the job driver
writes them, through `tria.catalog.Catalogue` (the single writer).

The rows are re-exported by `tria.catalog` and `pipelines.catalogue`; source adapters import them
through `pipelines.sources.base`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, TypeVar

TIERS = ("isolated", "separated", "synthetic")
ROLES = ("drums", "mix", "rir", "noise")
SPLITS = ("train", "val", "test")
RAW_STATUSES = ("ok", "missing", "bad")
SHARD_STATUSES = ("ok", "bad")
SHARD_KINDS = ("tokens", "prompts", "")  # "": a schema-1 shard that held tokens and features together

R = TypeVar("R", bound="Row")


def stable_id(*parts: object, n: int = 16) -> str:
    """Content-derived id: the first `n` hex chars of sha1 of the parts joined by "|".

    Ids are `[0-9a-f]+` only, so they are valid WebDataset keys (no dots) and stay the same
    across machines and re-runs.
    """
    text = "|".join(str(p) for p in parts)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def excerpt_id(source: str, track: str, stem: str, offset_s: float) -> str:
    """Stable excerpt key (SHARDS.md): sha1 of "source|track|stem|offset_ms", 16 hex chars."""
    return stable_id(source, track, stem, int(round(offset_s * 1000)))


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class Row:
    """Base class of catalogue rows: dict round-trip and the table/id contract."""

    table: ClassVar[str] = ""
    id_column: ClassVar[str] = ""

    @property
    def id(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Fields plus the id column; tuples become lists (DuckDB `VARCHAR[]`)."""
        out: dict[str, Any] = {self.id_column: self.id}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """Inverse of `to_dict`; ignores columns that are not fields (ids, timestamps)."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                value = data[f.name]
                kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    @classmethod
    def columns(cls) -> list[str]:
        """Table columns written by an upsert, id first."""
        return [cls.id_column] + [f.name for f in dataclasses.fields(cls)]


@dataclass(frozen=True)
class SourceRow(Row):
    """One corpus (mirrors `pipelines.sources.base.SourceInfo`)."""

    table: ClassVar[str] = "sources"
    id_column: ClassVar[str] = "source"
    name: str
    title: str
    licence: str
    tier: str
    role: str
    homepage: str = ""
    manual_download: bool = False
    description: str = ""

    @property
    def id(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        del out["name"]  # the id column `source` is the name
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SourceRow":
        data = dict(data)
        data.setdefault("name", data.get("source"))
        return super().from_dict(data)

    @classmethod
    def columns(cls) -> list[str]:
        return [c for c in super().columns() if c != "name"]


@dataclass(frozen=True)
class RawFileRow(Row):
    """A file as fetched: a downloaded archive, or a file found in a user's folder.

    Attributes:
        source: source name.
        name: the file's name relative to the source's raw folder (stable across machines).
        path: where it is now (local path or URI).
        size: bytes.
        sha256: hex digest of the content ("" if not computed).
        url: where it came from ("" for local/manual files).
        status: "ok", "missing" or "bad".
    """

    table: ClassVar[str] = "raw_files"
    id_column: ClassVar[str] = "raw_id"
    source: str
    name: str
    path: str
    size: int
    sha256: str = ""
    url: str = ""
    status: str = "ok"

    def __post_init__(self) -> None:
        _check_choice(self.status, RAW_STATUSES, "RawFileRow.status")

    @property
    def id(self) -> str:
        return stable_id(self.source, self.name)


@dataclass(frozen=True)
class TrackRow(Row):
    """One track (song, loop, kit pattern) of a source, with its split and licence."""

    table: ClassVar[str] = "tracks"
    id_column: ClassVar[str] = "track_id"
    source: str
    track: str
    split: str
    licence: str
    duration_s: float = 0.0
    title: str = ""
    meta_json: str = "{}"

    def __post_init__(self) -> None:
        _check_choice(self.split, SPLITS, "TrackRow.split")

    @property
    def id(self) -> str:
        return stable_id(self.source, self.track)


@dataclass(frozen=True)
class StemRow(Row):
    """One audio file in the common layout: a drum stem, a mix, a loop, an RIR or a noise.

    Attributes:
        source, track, stem: identity; `stem` is the stem's name within the track ("drums").
        role: what the audio is ("drums", "mix", "rir", "noise").
        tier: "isolated", "separated" or "synthetic" (see ARCHITECTURE "Quality tiers").
        split: "train", "val" or "test".
        licence: licence of this audio.
        path: the consolidated audio file (local path or URI).
        sample_rate, n_channels, n_samples: its format.
        raw_ids: the raw files it was made from (lineage back to the download).
        parent_stem_id: the stem it was derived from (a Demucs drum stem's mix), else "".
        sha256: hex digest of the consolidated file.
    """

    table: ClassVar[str] = "stems"
    id_column: ClassVar[str] = "stem_id"
    source: str
    track: str
    stem: str
    role: str
    tier: str
    split: str
    licence: str
    path: str
    sample_rate: int
    n_channels: int
    n_samples: int
    raw_ids: tuple[str, ...] = ()
    parent_stem_id: str = ""
    sha256: str = ""
    track_id: str = field(init=False, default="")
    duration_s: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        _check_choice(self.tier, TIERS, "StemRow.tier")
        _check_choice(self.role, ROLES, "StemRow.role")
        _check_choice(self.split, SPLITS, "StemRow.split")
        if self.sample_rate <= 0:
            raise ValueError(f"StemRow.sample_rate must be > 0, got {self.sample_rate}")
        # Derived columns, stored so that queries need no arithmetic or joins for them.
        object.__setattr__(self, "track_id", stable_id(self.source, self.track))
        object.__setattr__(self, "duration_s", self.n_samples / self.sample_rate)

    @property
    def id(self) -> str:
        return stable_id(self.source, self.track, self.stem)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StemRow":
        data = {k: v for k, v in data.items() if k not in ("track_id", "duration_s")}
        return super().from_dict(data)


@dataclass(frozen=True)
class ExcerptRow(Row):
    """A 6 s window of a stem chosen by the filter stage (SPEC 5.2)."""

    table: ClassVar[str] = "excerpts"
    id_column: ClassVar[str] = "excerpt_id"
    source: str
    track: str
    stem: str
    offset_s: float
    duration_s: float
    loudness_db: float
    salience: float = 0.0
    stem_id: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "stem_id", stable_id(self.source, self.track, self.stem))

    @property
    def id(self) -> str:
        return excerpt_id(self.source, self.track, self.stem, self.offset_s)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExcerptRow":
        return super().from_dict({k: v for k, v in data.items() if k != "stem_id"})


@dataclass(frozen=True)
class RejectRow(Row):
    """Something a stage dropped, and why (`what` is "raw_file", "track", "stem", "excerpt"...)."""

    table: ClassVar[str] = "rejects"
    id_column: ClassVar[str] = "reject_id"
    what: str
    item: str
    stage: str
    reason: str
    detail: str = ""
    source: str = ""
    run_id: str = ""

    @property
    def id(self) -> str:
        return stable_id(self.what, self.item, self.stage, self.reason)


def group_id(split: str, tier: str, idx: int) -> str:
    """Stable id of shard group ``idx`` of a (split, tier)."""
    return stable_id(split, tier, int(idx))


@dataclass(frozen=True)
class ShardGroupRow(Row):
    """A fixed set of excerpts (in a fixed order) that every field set stores as one shard."""

    table: ClassVar[str] = "shard_groups"
    id_column: ClassVar[str] = "group_id"
    split: str
    tier: str
    idx: int
    n_samples: int

    def __post_init__(self) -> None:
        _check_choice(self.tier, TIERS, "ShardGroupRow.tier")

    @property
    def id(self) -> str:
        return group_id(self.split, self.tier, self.idx)


@dataclass(frozen=True)
class ShardRow(Row):
    """A complete WebDataset shard (SHARDS.md); registered only after its rename.

    ``kind`` is "tokens" (``codec_id`` set) or "prompts" (``features_id`` and ``augment_id`` set);
    ``group_id`` names the shard group whose keys it holds, in the group's order.
    """

    table: ClassVar[str] = "shards"
    id_column: ClassVar[str] = "shard_id"
    path: str
    split: str
    tier: str
    n_samples: int
    n_bytes: int
    sha256: str
    codec_id: str = ""
    features_id: str = ""
    augment_id: str = ""
    status: str = "ok"
    run_id: str = ""
    kind: str = ""
    group_id: str = ""

    def __post_init__(self) -> None:
        _check_choice(self.status, SHARD_STATUSES, "ShardRow.status")
        _check_choice(self.tier, TIERS, "ShardRow.tier")
        _check_choice(self.kind, SHARD_KINDS, "ShardRow.kind")

    @property
    def id(self) -> str:
        return stable_id(self.path)


@dataclass(frozen=True)
class TrainingRunRow(Row):
    """A training run, keyed by its MLflow run id; its shard set is in `training_run_shards`."""

    table: ClassVar[str] = "training_runs"
    id_column: ClassVar[str] = "run_id"
    mlflow_run_id: str
    experiment: str = ""
    name: str = ""
    config_json: str = "{}"
    status: str = "running"

    @property
    def id(self) -> str:
        return self.mlflow_run_id


@dataclass(frozen=True)
class EvalRunRow(Row):
    """An evaluation of a checkpoint of a training run; `metrics_json` holds the numbers."""

    table: ClassVar[str] = "eval_runs"
    id_column: ClassVar[str] = "eval_id"
    training_run_id: str
    checkpoint: str
    split: str
    metrics_json: str = "{}"
    config_json: str = "{}"

    @property
    def id(self) -> str:
        return stable_id(self.training_run_id, self.checkpoint, self.split, self.config_json)


def to_json(data: Mapping[str, Any]) -> str:
    """Canonical JSON (sorted keys) so equal configs give equal ids."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
