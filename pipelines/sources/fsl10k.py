"""FSL10K, the Freesound Loop Dataset: ~10k music loops from Freesound (Zenodo record 3967852).

Layout of `FSL10K.zip`: `FSL10K/audio/wav/<freesound id>_*.wav` and `FSL10K/metadata.json`, a
mapping from Freesound id to the sound's Freesound metadata (`tags`, `license`, `username`,
`name`, ...). A loop's id is the leading digits of its file name.

Filter (SPEC 5.1, as the authors' `create_loops_manifests.py`): keep a loop when some tag contains
"drum" and no tag contains guitar, keyboard, vocal, bass or piano, its duration is >= 4 s and its
sample rate >= 22.05 kHz (read from the file header). Everything else is a reject with its reason,
so `rejects_by_reason` shows what the rule removed. Kept loops are "isolated" drums with the
loop's own Creative Commons licence and a hash split 80/10/10.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pipelines.sources.base import (
    AUDIO_EXTENSIONS,
    Consolidated,
    RejectRow,
    RemoteFile,
    Source,
    SourceInfo,
    TrackRow,
    audio_info,
    link_or_copy,
    probe_stem,
    stem_path,
)

EXCLUDED_WORDS = ("guitar", "keyboard", "vocal", "bass", "piano")
MIN_DURATION_S = 4.0
MIN_SAMPLE_RATE = 22050


def tag_reason(tags: Iterable[str]) -> str | None:
    """Why the tags rule drops a loop ("no_drum_tag", "excluded_tag"), or None to keep it."""
    tags = [str(t).lower() for t in tags]
    if not any("drum" in t for t in tags):
        return "no_drum_tag"
    if any(word in t for t in tags for word in EXCLUDED_WORDS):
        return "excluded_tag"
    return None


def _licence_name(url: str) -> str:
    """"http://creativecommons.org/licenses/by/3.0/" -> "CC-BY-3.0"; CC0 -> "CC0-1.0"."""
    m = re.search(r"creativecommons\.org/(?:licenses|publicdomain)/([a-z-]+)/([\d.]+)", url or "")
    if not m:
        return url or "unknown"
    kind, version = m.groups()
    return "CC0-1.0" if kind == "zero" else f"CC-{kind.upper()}-{version}"


class FSL10K(Source):
    """FreeSound Loop Dataset adapter, filtered to drum loops.

    Args:
        min_duration_s: shortest loop kept (4 s in the paper).
        min_sample_rate: lowest sample rate kept (22.05 kHz in the paper).
    """

    info = SourceInfo(
        name="fsl10k",
        title="Freesound Loop Dataset (FSL10K)",
        licence="per-loop Creative Commons (CC0, CC-BY, CC-BY-NC)",
        tier="isolated",
        role="drums",
        homepage="https://zenodo.org/records/3967852",
        description="Music loops from Freesound with tags; the drum loops of >= 4 s at >= 22.05 kHz "
        "are kept (about 1800 loops, 7 h).",
    )

    def __init__(
        self,
        files: Sequence[RemoteFile] = (),
        location: str | os.PathLike | None = None,
        split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
        min_duration_s: float = MIN_DURATION_S,
        min_sample_rate: int = MIN_SAMPLE_RATE,
        **options: Any,
    ) -> None:
        super().__init__(files=files, location=location, split_ratios=split_ratios, **options)
        self.min_duration_s = float(min_duration_s)
        self.min_sample_rate = int(min_sample_rate)

    def consolidate(self, raw_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Consolidated:
        """Link each kept loop to the common layout; every dropped loop becomes a reject."""
        tracks, stems, rejects = [], [], []
        for root, archive_raw_id in self.raw_roots(raw_dir):
            metadata = _load_metadata(root)
            for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
                loop_id = re.match(r"\d*", path.name).group(0)
                rel = path.relative_to(root).as_posix()
                meta = metadata.get(loop_id, {})
                reason, detail = self._check(path, meta)
                if reason:
                    rejects.append(RejectRow(what="loop", item=rel, stage="consolidate", reason=reason,
                                             detail=detail, source=self.name))
                    continue
                track = loop_id or path.stem
                split = self.split_of(track)
                licence = _licence_name(str(meta.get("license", "")))
                dest = link_or_copy(path, stem_path(out_dir, split, track, "drums", path.suffix.lower()))
                stem = probe_stem(self.name, track, "drums", "drums", "isolated", split, licence, dest,
                                  raw_ids=(archive_raw_id or self.raw_id(rel),))
                stems.append(stem)
                tracks.append(TrackRow(
                    source=self.name, track=track, split=split, licence=licence, duration_s=stem.duration_s,
                    title=str(meta.get("name", path.stem)),
                    meta_json=json.dumps({"tags": list(meta.get("tags", [])),
                                          "username": meta.get("username", "")}, sort_keys=True),
                ))
        return Consolidated(tracks=tuple(tracks), stems=tuple(stems), rejects=tuple(rejects))

    def _check(self, path: Path, meta: Mapping[str, Any]) -> tuple[str | None, str]:
        """The reject reason and detail of a loop, or (None, "") to keep it."""
        if not meta:
            return "no_metadata", "loop id not in metadata.json"
        reason = tag_reason(meta.get("tags", []))
        if reason:
            return reason, ",".join(map(str, meta.get("tags", [])))
        try:
            sample_rate, _, n_samples = audio_info(path)
        except ValueError as err:
            return "unreadable", str(err)
        if n_samples / sample_rate < self.min_duration_s:
            return "too_short", f"{n_samples / sample_rate:.3f} s < {self.min_duration_s} s"
        if sample_rate < self.min_sample_rate:
            return "low_sample_rate", f"{sample_rate} Hz < {self.min_sample_rate} Hz"
        return None, ""


def _load_metadata(root: Path) -> dict[str, dict[str, Any]]:
    """Freesound metadata by loop id, from every `metadata.json` under `root`.

    Accepts a mapping `{id: {...}}` or a list of records with an `id` field.
    """
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(root.rglob("metadata.json")):
        data = json.loads(path.read_text())
        records = data.items() if isinstance(data, dict) else ((r.get("id"), r) for r in data)
        for key, record in records:
            if isinstance(record, dict):
                out[str(key)] = record
    return out
