"""Shard groups as Ray Data rows: the excerpt stages applied to whole groups, and the worker that writes them.

One row of the dataset is one shard group (``plan`` in ``pipelines.run``): its id, split, tier, index,
the field sets it lacks (``want_tokens``, ``want_prompts``) and its excerpts in the group's order. Each
stage below wraps an excerpt-batch callable and applies it to a group in chunks:

* :func:`group_prompts` (CPU task): ``prompts_batch`` -> ``feats`` (n, K, n_bands, T) float16;
  or, where the codec actors hold GPUs, :class:`GroupPromptsTokenizer` runs it on the actor's device;
* :class:`GroupTokenizer` (actor, one codec each): the excerpt audio -> ``Tokenizer`` -> ``tokens``
  (n, 9, T) int16 and the FLAC bytes of listening splits;
* :func:`write_group` (task): writes the wanted field sets of the group (``shard.write_group_field``)
  and returns only catalogue records (JSON): the shard rows with their keys, the rejects, and a
  ``write_error`` for a group it could not write (its partial files removed).

A group that needs only prompts never reaches a codec, and one that needs only tokens is not featurised.
Every stage emits the same columns for every group (empty when a field set is not wanted), so blocks
stay uniform. The audio itself never travels between stages: each stage reads the excerpts it needs.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from pipelines.stages.prompts import PromptConfig, audio_batch, prompts_batch
from pipelines.stages.shard import remove_shard, write_group_field
from pipelines.stages.tokenize import Tokenizer
from tria.codec import CodecConfig
from tria.rows import RejectRow, ShardGroupRow

GROUP_COLUMNS = ("group_id", "split", "tier", "idx", "want_tokens", "want_prompts", "excerpts")
EXCERPT_COLUMNS = ("key", "source", "track", "stem", "path", "split", "tier", "offset_s", "duration_s",
                   "loudness_db")


def _rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v[i] for k, v in batch.items()} for i in range(len(batch["group_id"]))]


def _columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in rows[0]:
        values = [r[k] for r in rows]
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        out[k] = arr
    return out


def excerpt_batch(group: dict[str, Any], start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """Excerpts ``[start:stop]`` of a group as an excerpt batch (the columns the excerpt stages take)."""
    excerpts = list(group["excerpts"])[start:stop]
    return {c: np.asarray([e[c] for e in excerpts]) for c in EXCERPT_COLUMNS}


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, max(1, size))]


def group_prompts(batch: dict[str, Any], config: PromptConfig, chunk: int, device: str = "cpu") -> dict[str, Any]:
    """Adds ``feats`` and ``prompt_error`` (per excerpt) to groups that want prompts; the augmentation and
    features run on ``device`` (a CPU task's, or a codec actor's GPU: :class:`GroupPromptsTokenizer`)."""
    rows = _rows(batch)
    for g in rows:
        feats, errors = np.zeros((0,), np.float16), []
        if g["want_prompts"]:
            parts = [prompts_batch(excerpt_batch(g, a, b), config, device=device)
                     for a, b in _chunks(len(g["excerpts"]), chunk)]
            feats = np.concatenate([p["feats"] for p in parts])
            errors = [str(e) for p in parts for e in p["error"]]
        g.update(feats=feats, prompt_error=errors)
    return _columns(rows)


class GroupTokenizer(Tokenizer):
    """The ``Tokenizer`` actor over whole groups: adds ``tokens``, ``flac``, ``n_frames``, ``token_error``."""

    def __init__(self, config: CodecConfig, flac_splits: tuple[str, ...], duration_s: float, chunk: int):
        super().__init__(config, flac_splits)
        self.duration_s, self.chunk = duration_s, chunk

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        rows = _rows(batch)
        for g in rows:
            tokens, flac, n_frames, errors = np.zeros((0,), np.int16), [], [], []
            if g["want_tokens"]:
                parts = []
                for a, b in _chunks(len(g["excerpts"]), self.chunk):
                    ex = excerpt_batch(g, a, b)
                    audio, frames, error = audio_batch(ex, self.duration_s)
                    out = super().__call__({"audio": audio, "split": ex["split"]})
                    if str(out["codec_id"][0]) != self.codec.config_id:
                        raise RuntimeError(f"codec id mismatch: {out['codec_id'][0]} != {self.codec.config_id}")
                    parts.append(out["tokens"])
                    flac += list(out["flac"])
                    n_frames += [int(f) for f in frames]
                    errors += error
                tokens = np.concatenate(parts)
            g.update(tokens=tokens, flac=flac, n_frames=n_frames, token_error=errors)
        return _columns(rows)


class GroupPromptsTokenizer(GroupTokenizer):
    """Prompts + tokens of whole groups on one codec actor: :func:`group_prompts` on the actor's device
    (the GPU Ray gave it), then the codec. Where the codec actors hold GPUs this keeps a CPU prompts stage
    from starving them (``pipelines.resources.prompts_on_codec_actors`` decides)."""

    def __init__(self, config: CodecConfig, flac_splits: tuple[str, ...], duration_s: float, chunk: int,
                 prompts: PromptConfig):
        super().__init__(config, flac_splits, duration_s, chunk)
        self.prompts = prompts

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        return super().__call__(group_prompts(batch, self.prompts, self.chunk, device=self.device))


def write_group(batch: dict[str, Any], root: str, ids: dict[str, str], run_id: str) -> dict[str, Any]:
    """Writes the wanted field sets of each group; returns ``record`` rows (JSON) for the driver."""
    records: list[str] = []
    for g in _rows(batch):  # every group ends with a "done" record: no block is empty
        try:
            records += _write_one(g, root, ids, run_id)
        except OSError as e:  # nothing of the group stays; the driver registers the others, then fails
            records.append(json.dumps({"write_error": {"errno": e.errno, "message": str(e.strerror or e)}}))
        records.append(json.dumps({"done": str(g["group_id"])}))
    return {"record": np.asarray(records, dtype=object)}


def _write_one(g: dict[str, Any], root: str, ids: dict[str, str], run_id: str) -> list[str]:
    excerpts = list(g["excerpts"])
    keys = [str(e["key"]) for e in excerpts]
    failed: dict[str, tuple[str, str]] = {}  # key -> (stage, reason)
    for stage, kind, errors in (("prompts", "prompts", "prompt_error"), ("tokenize", "tokens", "token_error")):
        if g[f"want_{kind}"]:
            failed.update({k: (stage, str(e)) for k, e in zip(keys, g[errors]) if e and k not in failed})
    records = [json.dumps({"reject": RejectRow("excerpt", k, stage, reason, source=str(e["source"]),
                                               run_id=run_id).to_dict()})
               for e, k in zip(excerpts, keys) if k in failed for stage, reason in [failed[k]]]
    new_group = g["want_tokens"] and g["want_prompts"]
    if failed and not new_group:
        # An existing group's keys are fixed: a field set missing a sample would break the zip. The group
        # keeps lacking this field set (the rejects say why) and the next run tries again.
        return records
    keep = [i for i, k in enumerate(keys) if k not in failed]
    if not keep:
        return records
    group = ShardGroupRow(split=str(g["split"]), tier=str(g["tier"]), idx=int(g["idx"]), n_samples=len(keep))
    if group.id != g["group_id"]:
        raise RuntimeError(f"group id mismatch for {group.split}/{group.tier}/{group.idx}")
    done: list[str] = []
    try:
        for kind in ("tokens", "prompts"):
            if not g[f"want_{kind}"]:
                continue
            samples = [_sample(kind, g, excerpts[i], i, ids) for i in keep]
            row = write_group_field(root, kind, group, samples, ids, run_id)
            done.append(row.path)
            records.append(json.dumps({"shard": row.to_dict(), "keys": [keys[i] for i in keep],
                                       "group": group.to_dict()}))
    except Exception:
        for path in done:  # the group's field sets are returned together or not at all
            remove_shard(path)
        raise
    return records


def _sample(kind: str, g: dict[str, Any], e: dict[str, Any], i: int, ids: dict[str, str]) -> dict[str, Any]:
    key = str(e["key"])
    if kind == "prompts":
        return {"key": key, "feats": g["feats"][i],
                "meta": {"key": key, "features_id": ids["features_id"], "augment_id": ids["augment_id"]}}
    meta = {c: _plain(e[c]) for c in EXCERPT_COLUMNS if c != "path"}
    meta.update(n_frames=int(g["n_frames"][i]), sample_rate=44_100, codec_id=ids["codec_id"])
    return {"key": key, "tokens": g["tokens"][i], "flac": g["flac"][i] or None, "meta": meta}


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
