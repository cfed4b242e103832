"""Source registry: every corpus adapter by name, configured from `conf/sources.yaml`.

    >>> from pipelines.sources import get_source, list_sources
    >>> musdb = get_source("musdb18hq")            # files/urls from conf/sources.yaml
    >>> moises = get_source("moisesdb", location="~/Downloads/moisesdb.tar.gz")

Adapter modules are imported lazily, on first use: listing sources imports nothing heavy, and
a broken or missing adapter only fails when that source is asked for.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipelines.sources.base import Consolidated, RawFileRow, Source, SourceInfo

# name -> module that defines exactly one Source subclass whose `info.name` is that name.
ADAPTERS: dict[str, str] = {
    "musdb18hq": "pipelines.sources.musdb18hq",
    "moisesdb": "pipelines.sources.moisesdb",
    "fsl10k": "pipelines.sources.fsl10k",
    "mtg_jamendo": "pipelines.sources.mtg_jamendo",
    "rir": "pipelines.sources.rir",
    "noise": "pipelines.sources.noise",
    "local_folder": "pipelines.sources.local_folder",
    "hydrogen": "pipelines.sources.hydrogen",
    "hydrogen_simsep": "pipelines.sources.hydrogen_simsep",
}

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "sources.yaml"


def load_registry(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Entries of `conf/sources.yaml` (safe YAML) by source name; {} when the file is absent."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    sources = data.get("sources", {})
    if not isinstance(sources, Mapping):
        raise ValueError(f"{path}: 'sources' must be a mapping of name -> entry")
    unknown = set(sources) - set(ADAPTERS)
    if unknown:
        raise ValueError(f"{path}: unknown sources {sorted(unknown)}; known: {sorted(ADAPTERS)}")
    return {name: dict(entry or {}) for name, entry in sources.items()}


def source_class(name: str) -> type[Source]:
    """The adapter class of `name` (imports its module)."""
    if name not in ADAPTERS:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    module = importlib.import_module(ADAPTERS[name])
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Source)
            and value is not Source
            and getattr(value, "info", None) is not None
            and value.info.name == name
        ):
            return value
    raise ImportError(f"{ADAPTERS[name]} defines no Source subclass with info.name == {name!r}")


def get_source(name: str, config: str | Path | None = None, **overrides: Any) -> Source:
    """An adapter configured from the registry file, with keyword overrides on top.

    Args:
        name: registry name (see `list_sources()`).
        config: registry YAML; defaults to `conf/sources.yaml`.
        overrides: entry keys to replace (`location=...`, `files=[...]`, adapter options).
    """
    entry = dict(load_registry(config).get(name, {}))
    entry.update(overrides)
    return source_class(name).from_config(entry)


def source_info(name: str) -> SourceInfo:
    """The `SourceInfo` of `name`."""
    return source_class(name).info


def list_sources() -> list[str]:
    """Every registered source name, sorted."""
    return sorted(ADAPTERS)


@dataclass(frozen=True)
class IngestResult:
    """What one `ingest` did: the rows it produced (and wrote, when given a catalogue)."""

    raw_files: tuple[RawFileRow, ...]
    consolidated: Consolidated

    def summary(self) -> str:
        c = self.consolidated
        hours = sum(s.duration_s for s in c.stems) / 3600
        return (f"{len(self.raw_files)} raw files, {len(c.tracks)} tracks, {len(c.stems)} stems "
                f"({hours:.3f} h), {len(c.rejects)} rejects")


def source_dirs(source: Source, data_dir: str | Path) -> tuple[Path, Path]:
    """`(raw_dir, out_dir)` of a source under a data root: `raw/<name>` and `stems/<name>`."""
    return Path(data_dir) / "raw" / source.name, Path(data_dir) / "stems" / source.name


def ingest(
    source: Source, data_dir: str | Path, catalogue: Any = None, **download_options: Any
) -> IngestResult:
    """Fetch and consolidate one source, and record everything in the catalogue (if given).

    Idempotent: a second run fetches nothing, rewrites no finished stem, and upserts the same
    rows, so the catalogue is unchanged.

    Args:
        source: the adapter.
        data_dir: data root; raw files go to `raw/<name>/`, stems to `stems/<name>/`.
        catalogue: a `pipelines.catalogue.Catalogue` to write, or None.
        download_options: `DownloadConfig` fields (retries, timeout_s, progress...).
    """
    # Absolute paths in the catalogue: Ray jobs run in a copy of the working directory.
    raw_dir, out_dir = source_dirs(source, Path(data_dir).expanduser().resolve())
    raw_files = source.fetch(raw_dir, **download_options)
    consolidated = source.consolidate(raw_dir, out_dir)
    if catalogue is not None:
        with catalogue.transaction():
            catalogue.upsert_sources([source.info.to_row()])
            catalogue.upsert_raw_files(raw_files)
            catalogue.add_consolidated(consolidated)
    return IngestResult(raw_files=tuple(raw_files), consolidated=consolidated)
