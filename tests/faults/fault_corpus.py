"""A corpus of broken audio files, each with the reject reason the pipeline must give it, mixed with
good files (some of them odd but valid) whose excerpts must all reach the shards.

Everything is generated here from numpy, bytes and a few file-system calls; nothing is downloaded.
Names are relative paths as the catalogue stores them: a name that is not UTF-8 appears with its bad
bytes escaped as ``\\xNN`` (see :func:`catalogue_name`).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline_fixtures import render_loop

SR = 44_100
GOOD_SECONDS = 2.5


def catalogue_name(name: str | bytes) -> str:
    """How a file name appears in the catalogue: bytes that are not UTF-8 become ``\\xNN``."""
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


def wav_header(sr: int, channels: int = 1, bits: int = 16, data_bytes: int = 0, fmt_code: int = 1,
               riff_tag: bytes = b"RIFF", wave_tag: bytes = b"WAVE") -> bytes:
    """A 44-byte canonical WAV header, with every field under the caller's control (lies included)."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_code, channels, sr & 0xFFFFFFFF, (sr * align) & 0xFFFFFFFF, align, bits)
    riff_size = min(36 + data_bytes, 0xFFFFFFFF)
    return (riff_tag + struct.pack("<I", riff_size) + wave_tag + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_bytes & 0xFFFFFFFF))


def encoded(audio: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str | None = "PCM_16") -> bytes:
    """(N, C) float audio encoded to file bytes."""
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


@dataclass
class Corpus:
    """What was planted: catalogue name -> expected reject reason, and the good names."""

    folder: Path
    bad: dict[str, str] = field(default_factory=dict)
    good: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def put(self, name: str | bytes, data: bytes, reason: str | None) -> None:
        path = os.path.join(os.fsencode(self.folder), name if isinstance(name, bytes) else os.fsencode(name))
        with open(path, "wb") as f:
            f.write(data)
        self._expect(name, reason)

    def _expect(self, name: str | bytes, reason: str | None) -> None:
        key = catalogue_name(name)
        assert key not in self.bad and key not in self.good, f"planted twice: {key}"
        if reason is None:
            self.good.append(key)
        else:
            self.bad[key] = reason


def build(folder: Path, n_loops: int = 4) -> Corpus:
    """Plant the corpus in ``folder``; returns what each file must become."""
    folder.mkdir(parents=True, exist_ok=True)
    c = Corpus(folder)
    loop = render_loop(GOOD_SECONDS, seed=0)  # (N, 2) float32, a loud drum loop
    mono = np.ascontiguousarray(loop[:, 0])
    wav16, flac, mp3, ogg = (encoded(loop), encoded(loop, fmt="FLAC"), encoded(loop, fmt="MP3", subtype=None),
                             encoded(loop, fmt="OGG", subtype="VORBIS"))
    pcm = (np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes()

    # ---- good files (odd but valid): all must reach the shards --------------------------------------
    for i in range(n_loops):
        c.put(f"loop_{i:02d}.wav", encoded(render_loop(GOOD_SECONDS, seed=10 + i)), None)
    c.put("good.mp3", encoded(render_loop(GOOD_SECONDS, seed=20), fmt="MP3", subtype=None), None)
    c.put("good_48k.flac", encoded(render_loop(GOOD_SECONDS, seed=21), sr=48_000, fmt="FLAC"), None)
    c.put("flac_named.wav", encoded(render_loop(GOOD_SECONDS, seed=22), fmt="FLAC"), None)  # content decides
    c.put(b"caf\xe9_latin1.wav", encoded(render_loop(GOOD_SECONDS, seed=23)), None)  # not UTF-8: kept, escaped
    c.put("dup.wav", encoded(render_loop(GOOD_SECONDS, seed=24)), None)  # same name, two formats:
    c.put("dup.flac", encoded(render_loop(GOOD_SECONDS, seed=25), fmt="FLAC"), None)  # two tracks
    # A streamed WAV (data size 0xFFFFFFFF: the writer could not seek back) is valid, not truncated.
    c.put("streamed.wav", wav_header(SR, data_bytes=0xFFFFFFFF) + pcm, None)

    # ---- headers that cannot be parsed (most are rejected at consolidation) ---------------------------
    for ext in ("wav", "flac", "mp3", "ogg", "aiff"):
        c.put(f"zero_length.{ext}", b"", "unreadable")
    c.put("cut_at_4_bytes.wav", wav16[:4], "unreadable")
    c.put("cut_at_20_bytes.wav", wav16[:20], "unreadable")
    c.put("cut_in_header.flac", flac[:20], "unreadable")
    c.put("cut_at_44_bytes.flac", flac[:44], "unreadable")
    c.put("cut_to_10pct.mp3", mp3[: len(mp3) // 10], "truncated")  # the Xing header still opens
    c.put("cut_to_10pct.ogg", ogg[: len(ogg) // 10], "unreadable")
    c.put("rate_0hz.wav", wav_header(0, data_bytes=len(pcm)) + pcm, "unreadable")
    c.put("rate_4ghz.wav", wav_header(0xFFFFFFFF, data_bytes=len(pcm)) + pcm, "unreadable")
    c.put("zero_channels.wav", wav_header(SR, channels=0, data_bytes=len(pcm)) + pcm, "unreadable")
    c.put("5000_channels.wav", wav_header(SR, channels=5000, data_bytes=len(pcm)) + pcm, "unreadable")
    c.put("zero_bits.wav", wav_header(SR, bits=0, data_bytes=len(pcm)) + pcm, "unreadable")
    c.put("unknown_codec.wav", wav_header(SR, fmt_code=0x1234, data_bytes=len(pcm)) + pcm, "unreadable")
    c.put("no_data_chunk.wav", wav_header(SR)[:-8], "unreadable")
    c.put("rifx_magic.wav", wav_header(SR, riff_tag=b"RIFX", data_bytes=len(pcm)) + pcm, "unreadable")
    c.put("avi_not_wave.wav", wav_header(SR, wave_tag=b"AVI ", data_bytes=len(pcm)) + pcm, "unreadable")
    rng = np.random.default_rng(7)
    c.put("text_named.wav", b"these are liner notes, not audio\n" * 20, "unreadable")
    c.put("text_named.flac", b"README\n" * 50, "unreadable")
    c.put("html_named.mp3", b"<html><body>404 Not Found</body></html>\n", "unreadable")
    c.put("png_named.wav", b"\x89PNG\r\n\x1a\n" + rng.bytes(400), "unreadable")
    c.put("random_bytes.aiff", rng.bytes(5000), "unreadable")
    c.put("flac_magic_then_noise.flac", b"fLaC" + rng.bytes(600), "unreadable")
    c.put("id3_then_noise.mp3", b"ID3\x03\x00\x00\x00\x00\x00\x00" + rng.bytes(600), "unreadable")
    c.put("oggs_then_noise.ogg", b"OggS" + rng.bytes(600), "unreadable")
    c.put(b"broken_\xff\xfe_name.wav", b"not audio at all", "unreadable")  # bad name AND bad content

    # ---- not files at all ------------------------------------------------------------------------------
    os.mkfifo(folder / "fifo.wav")  # opening it would block forever
    c._expect("fifo.wav", "not_a_file")
    (folder / "folder.wav").mkdir()
    c._expect("folder.wav", "not_a_file")
    os.symlink("loop_b.wav", folder / "loop_a.wav")
    os.symlink("loop_a.wav", folder / "loop_b.wav")
    os.symlink("self_loop.wav", folder / "self_loop.wav")
    os.symlink("nowhere/missing.wav", folder / "dangling.wav")
    for name, reason in (("loop_a.wav", "symlink_loop"), ("loop_b.wav", "symlink_loop"),
                         ("self_loop.wav", "symlink_loop"), ("dangling.wav", "broken_link")):
        c._expect(name, reason)
    if os.geteuid() != 0:
        c.put("no_permission.wav", wav16, "unreadable")
        os.chmod(folder / "no_permission.wav", 0)
    else:  # root reads a chmod 000 file anyway: the FIFO and the folder above stand in for it
        c.notes.append("running as root: chmod 000 does not block reads; a FIFO and a folder named "
                       "*.wav are the unreadable entries instead")

    # ---- readable headers, bad content: rejected by the filter stage ----------------------------------
    c.put("cut_to_50pct.wav", wav16[: len(wav16) // 2], "truncated")
    c.put("cut_to_90pct.wav", wav16[: len(wav16) * 9 // 10], "truncated")
    c.put("claims_10h_holds_2s.wav", wav_header(SR, data_bytes=36_000 * SR * 2) + pcm, "truncated")
    c.put("cut_to_50pct.mp3", mp3[: len(mp3) // 2], "truncated")
    c.put("cut_to_80pct.mp3", mp3[: len(mp3) * 8 // 10], "truncated")
    c.put("cut_to_50pct.flac", flac[: len(flac) // 2], "unreadable")
    c.put("cut_to_90pct.flac", flac[: len(flac) * 9 // 10], "unreadable")
    for name, value, channel in (("nan", np.nan, 0), ("inf", np.inf, 0), ("neg_inf", -np.inf, 0),
                                 ("nan_right_channel", np.nan, 1)):
        x = loop.copy()
        x[5000:5100, channel] = value
        c.put(f"{name}.wav", encoded(x, subtype="FLOAT"), "non_finite")
    c.put("all_nan.wav", encoded(np.full((SR, 1), np.nan, np.float32), subtype="FLOAT"), "non_finite")
    c.put("nan_double.wav", encoded(np.where(np.arange(len(mono))[:, None] == 777, np.nan, loop), subtype="DOUBLE"),
          "non_finite")
    c.put(b"nan_\xe9\xe8.wav", encoded(np.full((SR * 2, 1), np.nan, np.float32), subtype="FLOAT"), "non_finite")
    c.put("rate_1hz.wav", wav_header(1, data_bytes=len(pcm)) + pcm, "sample_rate_too_low")
    c.put("rate_100hz.wav", wav_header(100, data_bytes=len(pcm)) + pcm, "sample_rate_too_low")
    c.put("rate_8khz.wav", encoded(loop[::5], sr=8_000), "sample_rate_too_low")
    c.put("rate_10mhz.wav", wav_header(10_000_000, data_bytes=len(pcm)) + pcm, "sample_rate_too_high")
    if _flac_takes_rate(1_000_000):  # libsndfile builds differ in the FLAC rates they write
        c.put("rate_1mhz.flac", encoded(loop, sr=1_000_000, fmt="FLAC"), "sample_rate_too_high")
    else:
        c.put("rate_1mhz.wav", wav_header(1_000_000, data_bytes=len(pcm)) + pcm, "sample_rate_too_high")
    c.put("one_sample.wav", encoded(loop[:1]), "too_short")
    c.put("one_sample.flac", encoded(loop[:1], fmt="FLAC"), "too_short")
    c.put("half_second.wav", encoded(loop[: SR // 2]), "too_short")
    c.put("header_only.wav", wav_header(SR), "empty")
    c.put("says_zero_bytes.wav", wav_header(SR, data_bytes=0)[:-4] + struct.pack("<I", 0) + pcm, "empty")
    c.put("silent.wav", encoded(np.zeros((2 * SR, 2), np.float32)), "silent")
    c.put("hiss_at_minus_75db.wav", encoded((10 ** (-75 / 20) * rng.standard_normal((2 * SR, 1))).astype(np.float32),
                                          subtype="FLOAT"), "silent")
    quiet = loop * (10 ** (-40 / 20) / np.sqrt(np.mean(loop.astype(np.float64) ** 2)))
    c.put("quiet_minus_40db.wav", encoded(quiet.astype(np.float32), subtype="FLOAT"), "below_loudness_cutoff")
    square = np.sign(np.sin(2 * np.pi * 100 * np.arange(2 * SR) / SR))[:, None].astype(np.float32)
    c.put("square_full_scale.wav", encoded(square), "clipped")
    # Ten hours that take no disk: a real header for 10 h of 16 kHz 8-bit audio, then a sparse hole.
    n_bytes = 10 * 3600 * 16_000
    path = folder / "ten_hours_sparse.wav"
    with open(path, "wb") as f:
        f.write(wav_header(16_000, bits=8, data_bytes=n_bytes))
        f.truncate(44 + n_bytes)
    c._expect("ten_hours_sparse.wav", "too_long")
    return c


def _flac_takes_rate(sr: int) -> bool:
    try:
        encoded(np.zeros((16, 1), np.float32), sr=sr, fmt="FLAC")
        return True
    except Exception:
        return False
