r"""FSL10K, the Freesound Loop Dataset: ~10k music loops from Freesound (Zenodo record 3967852).

Layout of `FSL10K.zip`: `FSL10K/metadata.json`, a mapping from Freesound sound id to the
sound's Freesound metadata (`tags`, `license`, `username`, `name`, `preview_url`, ...), and the
audio as `FSL10K/audio/wav/<sound id>_<user id>.<original extension>.wav` (`.wav.wav` and
`.aiff.wav` files: every loop converted to wav).

Selection, as the authors' `scripts/setup/create_loops_manifests.py` (SPEC 5.1): for every
metadata entry, keep the loop when some tag contains "drum" and no tag contains guitar,
keyboard, vocal, bass or piano; its file is `audio/wav/<id>.wav.wav`, else `<id>.aiff.wav`,
where `<id>` is the `\d+_\d+` in the entry's `preview_url` file name; then its duration must be
>= 4 s and its sample rate >= 22.05 kHz. Files that no entry selects are rejected
("not_selected"), and so is every dropped entry, with its reason, so `rejects_by_reason` shows
what the rule removed. Kept loops are "isolated" drums under the loop's own Creative Commons
licence, with the uploader as the attribution.

Splits: `split_mode: authors` splits like their manifest: it lists every `.wav` file under
`FSL10K/` (kept or not), sorts, permutes with seed 0, and only then drops the loops not
selected. "hash" (default) hashes the sound id. Their release config trains on all three
splits (`train_on: [train, val, test]`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pipelines.sources.base import (
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
        """Link each selected loop to the common layout; everything dropped becomes a reject."""
        tracks, stems, rejects = [], [], []
        for top, archive_raw_id in self.raw_roots(raw_dir):
            root = _corpus_root(top)
            # The authors' manifest lists every .wav under FSL10K/, selected or not.
            wavs = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*.wav")) if p.is_file()}
            own = self.assign_splits({rel: rel for rel in wavs})
            selected: dict[str, tuple[str, dict[str, Any]]] = {}
            for sound_id, meta in _load_metadata(root).items():
                rel, reason, detail = self._select(root, wavs, meta)
                if reason:
                    rejects.append(RejectRow(what="loop", item=rel or sound_id, stage="consolidate",
                                             reason=reason, detail=detail, source=self.name))
                else:
                    selected[rel] = (sound_id, meta)
            explained = {r.item for r in rejects}
            for rel, path in wavs.items():
                if rel not in selected:
                    if rel not in explained:
                        rejects.append(RejectRow(what="loop", item=rel, stage="consolidate", reason="not_selected",
                                                 detail="no metadata entry selects this file", source=self.name))
                    continue
                sound_id, meta = selected[rel]
                split = self.catalogue_split(own[rel])
                licence = _licence_name(str(meta.get("license", "")))
                dest = link_or_copy(path, stem_path(out_dir, split, sound_id, "drums", ".wav"))
                stem = probe_stem(self.name, sound_id, "drums", "drums", "isolated", split, licence, dest,
                                  raw_ids=(archive_raw_id or self.raw_id(path.relative_to(top).as_posix()),))
                stems.append(stem)
                tracks.append(TrackRow(
                    source=self.name, track=sound_id, split=split, licence=licence, duration_s=stem.duration_s,
                    title=str(meta.get("name", path.stem)),
                    meta_json=json.dumps({"tags": list(meta.get("tags", [])), "username": meta.get("username", ""),
                                          "file": rel, "source_split": own[rel]}, sort_keys=True),
                ))
        return Consolidated(tracks=tuple(tracks), stems=tuple(stems), rejects=tuple(rejects))

    def _select(self, root: Path, wavs: Mapping[str, Path], meta: Mapping[str, Any]) -> tuple[str, str | None, str]:
        """`(file, reject reason, detail)` of one metadata entry; reason None = keep the file."""
        tags = [str(t).strip() for t in meta.get("tags", [])]
        reason = tag_reason(tags)
        found = re.search(r"\d+_\d+", str(meta.get("preview_url", "")).rsplit("/", 1)[-1])
        if not found:
            return "", reason or "no_file_id", "no <id>_<user> in preview_url"
        candidates = [f"audio/wav/{found.group()}.wav.wav", f"audio/wav/{found.group()}.aiff.wav"]
        rel = next((c for c in candidates if c in wavs), "")
        if reason:
            return rel, reason, ",".join(tags)
        if not rel:
            return "", "missing_file", " or ".join(candidates)
        try:
            sample_rate, _, n_samples = audio_info(wavs[rel])
        except ValueError as err:
            return rel, "unreadable", str(err)
        if n_samples / sample_rate < self.min_duration_s:
            return rel, "too_short", f"{n_samples / sample_rate:.3f} s < {self.min_duration_s} s"
        if sample_rate < self.min_sample_rate:
            return rel, "low_sample_rate", f"{sample_rate} Hz < {self.min_sample_rate} Hz"
        return rel, None, ""


def _corpus_root(top: Path) -> Path:
    """The folder holding `metadata.json` (`FSL10K/` inside the archive), or `top` itself."""
    found = sorted(top.rglob("metadata.json"), key=lambda p: len(p.parts))
    return found[0].parent if found else top


def _load_metadata(root: Path) -> dict[str, dict[str, Any]]:
    """Freesound metadata by sound id, from `root/metadata.json` ({} when absent).

    Accepts a mapping `{id: {...}}` or a list of records with an `id` field.
    """
    out: dict[str, dict[str, Any]] = {}
    for path in [root / "metadata.json"] if (root / "metadata.json").is_file() else []:
        data = json.loads(path.read_text())
        records = data.items() if isinstance(data, dict) else ((r.get("id"), r) for r in data)
        for key, record in records:
            if isinstance(record, dict):
                out[str(key)] = record
    return out
