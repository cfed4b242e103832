"""Filter stage: check each drum stem and choose salient 6 s excerpts (SPEC 5.2).

A Ray Data batch function over stems. For each stem it returns either excerpt rows or one reject
row with a reason, so a broken file ends in the rejects table and never aborts the run. Audio is read
window by window (``soundfile`` seeks), so a 10-hour file costs no more memory than a 6 s one.

Several excerpts per long stem: the stem is cut into regions of ``region_s`` seconds, and each region
gets the authors' salience search: up to ``num_tries`` uniformly random offsets in the region, the first
whose RMS reaches ``loudness_cutoff_db`` wins, else the loudest tried. A region whose best window is
still below the cutoff is skipped (silence between songs, count-ins); a stem with no region left is
rejected as ``below_loudness_cutoff``. With ``region_s`` >= the stem length this is exactly the authors'
one-excerpt-per-draw search.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf

from pipelines.rows import ExcerptRow, RejectRow

STAGE = "filter"


@dataclass(frozen=True)
class FilterConfig:
    duration_s: float = 6.0  # excerpt length (SPEC: 6.0 s -> 516 token frames)
    loudness_cutoff_db: float = -24.0  # RMS dBFS, not LUFS (SPEC 5.2)
    num_tries: int = 8
    region_s: float = 30.0  # one excerpt per region of a long stem
    max_excerpts: int = 64  # per stem
    min_duration_s: float = 1.0  # shorter stems are rejected as too_short
    min_sample_rate: int = 16_000  # lower rates cannot carry the codec's band
    max_sample_rate: int = 768_000  # higher rates are corrupt headers (a 10 MHz "wav"), not audio
    max_duration_s: float = 4 * 3600.0  # longer files are rejected as too_long (corrupt headers)
    clip_fraction: float = 0.01  # reject an excerpt window with more samples at full scale than this
    silence_db: float = -60.0  # a stem whose loudest window is below this is "silent"
    seed: int = 0


def rms_db(x: np.ndarray) -> float:
    """RMS level in dBFS of a (C, N) or (N,) window, pooled over channels (the authors' salience)."""
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12)))


def wav_truncation(path: str) -> str:
    """Why a RIFF/WAVE file is cut short ("" when it is whole).

    libsndfile silently clamps a ``data`` chunk that claims more bytes than the file holds, so a
    truncated download reads as a shorter, valid file; the header's own size is the only evidence.
    The streaming placeholders 0 and 0xFFFFFFFF (writers that cannot seek back) are not truncation.
    """
    try:
        return _wav_truncation(path)
    except OSError:  # vanished or unreadable now: the reads that follow report it
        return ""


def _wav_truncation(path: str) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return ""
        offset = 12
        for _ in range(64):  # a handful of chunks precede "data" in any real file
            fh.seek(offset)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return ""
            declared = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                have = size - offset - 8
                if declared not in (0, 0xFFFFFFFF) and declared > have:
                    return f"data chunk declares {declared} bytes, the file holds {have}"
                return ""
            offset += 8 + declared + (declared & 1)
    return ""


def _read(f: sf.SoundFile, start: int, frames: int) -> np.ndarray:
    f.seek(start)
    return f.read(frames=frames, dtype="float32", always_2d=True).T  # (C, n)


def _stem_seed(stem_id: str, region: int, seed: int) -> int:
    return (zlib.crc32(f"{stem_id}|{region}".encode()) + seed) % (2**32)


def choose_excerpts(path: str, stem_id: str, config: FilterConfig) -> tuple[list[dict[str, Any]], str, str]:
    """Excerpt windows of one stem, or why there are none.

    Returns:
        ``(excerpts, reason, detail)``: excerpts are dicts with offset_s, duration_s, loudness_db,
        salience (RMS of the window minus the cutoff, dB); ``reason`` is "" when at least one was kept.
    """
    try:
        f = sf.SoundFile(path)
    except Exception as e:  # libsndfile raises several types for broken files
        return [], "unreadable", f"{type(e).__name__}: {e}"[:500]
    with f:
        sr, n = f.samplerate, f.frames
        cut = wav_truncation(path) if f.format == "WAV" else ""
        if cut:
            return [], "truncated", cut
        if sr < config.min_sample_rate:
            return [], "sample_rate_too_low", f"{sr} Hz < {config.min_sample_rate} Hz"
        if sr > config.max_sample_rate:
            return [], "sample_rate_too_high", f"{sr} Hz > {config.max_sample_rate} Hz"
        if n == 0:
            return [], "empty", "the file holds no audio frames"
        if n < config.min_duration_s * sr:
            return [], "too_short", f"{n / sr:.3f} s < {config.min_duration_s} s"
        if n > config.max_duration_s * sr:
            return [], "too_long", f"{n / sr:.0f} s > {config.max_duration_s:.0f} s"
        win = int(round(config.duration_s * sr))
        n_regions = max(1, min(config.max_excerpts, math.ceil(n / (config.region_s * sr))))
        kept, loudest = [], -np.inf
        try:
            for r in range(n_regions):
                lo = int(r * config.region_s * sr)
                hi = min(n, int((r + 1) * config.region_s * sr)) if n_regions > 1 else n
                rng = np.random.RandomState(_stem_seed(stem_id, r, config.seed))
                best = None
                for _ in range(config.num_tries):
                    start = lo + (int(rng.uniform(0, hi - lo - win)) if hi - lo > win else 0)
                    x = _read(f, start, win)
                    want = min(win, n - start)
                    if want - x.shape[1] > max(2304, 0.01 * want):  # 2304: two MP3 frames of seek slack
                        return [], "truncated", (f"header promises {n} frames, reading at {start} "
                                                 f"gave {x.shape[1]} of {want}")
                    if not np.isfinite(x).all():
                        return [], "non_finite", f"NaN/Inf samples near {start / sr:.2f} s"
                    level = rms_db(x)
                    if best is None or level > best[1]:
                        best = (start, level, x)
                    if level >= config.loudness_cutoff_db:
                        break
                start, level, x = best
                loudest = max(loudest, level)
                if level < config.loudness_cutoff_db:
                    continue
                if np.mean(np.abs(x) >= 0.999) > config.clip_fraction:
                    return [], "clipped", f"{np.mean(np.abs(x) >= 0.999):.1%} of samples at full scale"
                kept.append(dict(offset_s=start / sr, duration_s=min(win, n - start) / sr,
                                 loudness_db=level, salience=level - config.loudness_cutoff_db))
        except Exception as e:  # a file that opens but fails mid-read (truncated data chunk)
            return [], "unreadable", f"{type(e).__name__}: {e}"[:500]
    if kept:
        return kept, "", ""
    if loudest < config.silence_db:
        return [], "silent", f"loudest window {loudest:.1f} dBFS"
    return [], "below_loudness_cutoff", f"loudest window {loudest:.1f} dBFS < {config.loudness_cutoff_db} dB"


def filter_batch(batch: dict[str, np.ndarray], config: FilterConfig) -> dict[str, np.ndarray]:
    """Ray Data batch function: stems in, one row per excerpt or reject out.

    Input columns: stem_id, source, track, stem, path, split, tier. Output columns: kind ("excerpt" or
    "reject"), the excerpt's fields and key, and reason/detail for rejects.
    """
    out: dict[str, list] = {k: [] for k in (
        "kind", "key", "stem_id", "source", "track", "stem", "path", "split", "tier",
        "offset_s", "duration_s", "loudness_db", "salience", "reason", "detail")}
    for i in range(len(batch["stem_id"])):
        meta = {k: str(batch[k][i]) for k in ("stem_id", "source", "track", "stem", "path", "split", "tier")}
        try:
            excerpts, reason, detail = choose_excerpts(meta["path"], meta["stem_id"], config)
        except Exception as e:  # one strange file must become a reject, not a failed task that aborts the run
            excerpts, reason, detail = [], "filter_error", f"{type(e).__name__}: {e}"[:500]
        rows = [dict(kind="excerpt", reason="", detail="", **e) for e in excerpts] or [
            dict(kind="reject", reason=reason, detail=detail, offset_s=0.0, duration_s=0.0,
                 loudness_db=float("nan"), salience=0.0)]
        for row in rows:
            key = ExcerptRow(meta["source"], meta["track"], meta["stem"], row["offset_s"], row["duration_s"],
                             row["loudness_db"]).id if row["kind"] == "excerpt" else ""
            for k, v in {**meta, **row, "key": key}.items():
                out[k].append(v)
    return {k: np.asarray(v) for k, v in out.items()}


def rows_from_batch(batch: dict[str, np.ndarray], run_id: str = "") -> tuple[list[ExcerptRow], list[RejectRow]]:
    """Catalogue rows of a :func:`filter_batch` output (built on the driver, the single writer)."""
    excerpts, rejects = [], []
    for i in range(len(batch["kind"])):
        if batch["kind"][i] == "excerpt":
            excerpts.append(ExcerptRow(str(batch["source"][i]), str(batch["track"][i]), str(batch["stem"][i]),
                                       float(batch["offset_s"][i]), float(batch["duration_s"][i]),
                                       float(batch["loudness_db"][i]), float(batch["salience"][i])))
        else:
            rejects.append(RejectRow("stem", str(batch["stem_id"][i]), STAGE, str(batch["reason"][i]),
                                     str(batch["detail"][i]), str(batch["source"][i]), run_id))
    return excerpts, rejects
