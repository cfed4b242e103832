"""Fixtures for the pipeline tests: a real HTTP server with Range support and fault injection,
and small archives built in each corpus's real layout from synthetic audio."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 44_100


# --------------------------------------------------------------------------------- audio


def tone(seconds: float, sr: int = SR, channels: int = 2, freq: float = 220.0, amp: float = 0.3,
         seed: int = 0) -> np.ndarray:
    """(C, N) float32: a decaying-burst pattern plus a little noise, different per seed."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    y = amp * np.sin(2 * np.pi * (freq + 20 * seed) * t) * np.exp(-(t % 0.5) / 0.05)
    y = y + 0.01 * rng.standard_normal(n)
    return np.stack([y * (1 - 0.1 * c) for c in range(channels)]).astype(np.float32)


def wav_bytes(audio: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str | None = "FLOAT") -> bytes:
    """Encode (C, N) audio to file bytes (FLOAT wav keeps the samples exact)."""
    buf = io.BytesIO()
    sf.write(buf, audio.T, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --------------------------------------------------------------------------------- server


@dataclass
class Fault:
    kind: str  # "status" | "cut" | "corrupt" | "stall" | "ignore_range"
    times: int | None  # None = forever
    status: int = 500
    after: int = 0  # "cut": bytes of the body sent before the connection is dropped
    stall_s: float = 0.0


@dataclass
class CorpusServer:
    """Serves in-memory files over HTTP on 127.0.0.1, honouring `Range: bytes=N-`.

    Counts requests and body bytes per path, and injects faults queued with `fault()`.
    """

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=lambda: defaultdict(list))
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range, status)
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, data: bytes) -> str:
        self.files["/" + name] = data
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def fault(self, name: str, kind: str, times: int | None = 1, **kw) -> None:
        self.faults["/" + name].append(Fault(kind=kind, times=times, **kw))

    def requests_for(self, name: str) -> list[tuple[str, str | None, int]]:
        return [r for r in self.requests if r[0] == "/" + name]

    def bytes_sent(self, name: str) -> int:
        return self.sent["/" + name]

    def reset_counts(self) -> None:
        self.requests.clear()
        self.sent.clear()

    def _next_fault(self, path: str) -> Fault | None:
        with self.lock:
            queue = self.faults.get(path) or []
            if not queue:
                return None
            fault = queue[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    queue.pop(0)
            return fault


def _handler(server: CorpusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _record(self, status: int) -> None:
            server.requests.append((self.path, self.headers.get("Range"), status))

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            fault = server._next_fault(self.path)
            if fault and fault.kind == "status":
                self._record(fault.status)
                self.send_error(fault.status)
                return
            data = server.files.get(self.path)
            if data is None:
                self._record(404)
                self.send_error(404)
                return
            start = 0
            range_header = self.headers.get("Range")
            if range_header and not (fault and fault.kind == "ignore_range"):
                start = int(range_header.split("=")[1].split("-")[0])
                if start >= len(data):
                    self._record(416)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            else:
                status = 200
            body = data[start:]
            if fault and fault.kind == "corrupt":
                mid = len(body) // 2
                body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1:]
            self._record(status)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if fault and fault.kind == "stall":
                time.sleep(fault.stall_s)
            if fault and fault.kind == "cut":
                body = body[: fault.after]
                self.close_connection = True
            self.wfile.write(body)
            self.wfile.flush()
            with server.lock:
                server.sent[self.path] += len(body)

    return Handler


@pytest.fixture
def corpus_server():
    """A `CorpusServer` running in a thread for the duration of one test."""
    state = CorpusServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------- corpora


def musdb_zip() -> bytes:
    """`train/<track>/{5 stems}.wav` and `test/...`; one test track lacks drums.wav."""
    members = {}
    for i, (split, track) in enumerate([("train", "Artist A - Song One"), ("train", "Artist B - Song Two"),
                                        ("test", "Artist C - Song Three")]):
        for j, stem in enumerate(("mixture", "drums", "bass", "other", "vocals")):
            members[f"{split}/{track}/{stem}.wav"] = wav_bytes(tone(1.0 + 0.5 * i, seed=10 * i + j), subtype="PCM_16")
    for stem in ("mixture", "bass", "other", "vocals"):
        members[f"test/Artist D - No Drums/{stem}.wav"] = wav_bytes(tone(1.0, seed=99), subtype="PCM_16")
    return make_zip(members)


MOISES_TRACKS = {
    # uuid: {sub-folder: [(seconds, seed, amp)]}
    "0a1b2c3d-0000-4000-8000-000000000001": {
        "drums": [(1.0, 1, 0.5), (0.8, 2, 0.5)],
        "percussion": [(1.2, 3, 0.5)],
        "bass": [(1.5, 4, 0.3)],  # the longest file: the drum stem is padded to it
    },
    "0a1b2c3d-0000-4000-8000-000000000002": {
        "drums": [(1.0, 5, 0.2)],
        "vocals": [(1.0, 6, 0.3)],
    },
    "0a1b2c3d-0000-4000-8000-000000000003": {  # no drums: rejected
        "guitar": [(1.0, 7, 0.3)],
    },
}


def moises_members() -> dict[str, bytes]:
    """`moisesdb/moisesdb_v0.1/<uuid>/data.json` and `<uuid>/<instrument>/<part uuid>.wav`."""
    members = {}
    for t, (uuid, folders) in enumerate(MOISES_TRACKS.items()):
        members[f"moisesdb/moisesdb_v0.1/{uuid}/data.json"] = json.dumps(
            {"song": f"Song {t}", "artist": f"Artist {t}", "genre": "rock", "stems": sorted(folders)}).encode()
        for folder, parts in folders.items():
            for k, (seconds, seed, amp) in enumerate(parts):
                members[f"moisesdb/moisesdb_v0.1/{uuid}/{folder}/{seed:08d}-part{k}.wav"] = wav_bytes(
                    tone(seconds, seed=seed, amp=amp))
    return members


FSL_LOOPS = {
    # sound id: (tags, seconds, sample rate, file suffix or None for no file)
    "1001": (["drum", "loop", "hiphop"], 5.0, SR, ".wav.wav"),   # kept
    "1002": (["drums", "beat"], 2.0, SR, ".wav.wav"),            # too_short
    "1003": (["drum-loop"], 5.0, 16_000, ".aiff.wav"),           # low_sample_rate
    "1004": (["drum", "guitar"], 5.0, SR, ".wav.wav"),           # excluded_tag
    "1005": (["synth", "pad"], 5.0, SR, ".wav.wav"),             # no_drum_tag
    "1006": ([" Drums ", "808"], 4.5, SR, ".aiff.wav"),          # kept: the .aiff.wav fallback
    "1007": (["drum"], 5.0, SR, None),                           # missing_file
}


def fsl_zip() -> bytes:
    """The real layout: `FSL10K/metadata.json` keyed by sound id (with `preview_url`) and
    `FSL10K/audio/wav/<id>_<user>.<ext>.wav`; one loop per filter case, one file no entry names."""
    meta, members = {}, {}
    for i, (loop_id, (tags, seconds, sr, suffix)) in enumerate(FSL_LOOPS.items()):
        user = 500 + i
        meta[loop_id] = {"tags": tags, "license": "http://creativecommons.org/licenses/by/3.0/",
                         "username": f"user{i}", "name": f"loop {loop_id}.wav",
                         "preview_url": f"https://freesound.org/data/previews/1/{loop_id}_{user}-hq.mp3"}
        if suffix:
            members[f"FSL10K/audio/wav/{loop_id}_{user}{suffix}"] = wav_bytes(tone(seconds, sr=sr, seed=i), sr=sr,
                                                                             subtype="PCM_16")
    members["FSL10K/audio/wav/9999_1.wav.wav"] = wav_bytes(tone(5.0, seed=42), subtype="PCM_16")  # no entry
    members["FSL10K/metadata.json"] = json.dumps(meta).encode()
    return make_zip(members)


def jamendo_files() -> tuple[bytes, bytes]:
    """(`raw_30s_cleantags.tsv`, `raw_30s_audio-00.tar` with `00/<id>.mp3`); one mp3 is not in the TSV."""
    tsv = "TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n"
    tsv += "track_0000100\tartist_001\talbum_001\t00/100.mp3\t1.5\tgenre---rock\tinstrument---drums\n"
    tsv += "track_0000200\tartist_002\talbum_002\t00/200.mp3\t1.0\tgenre---jazz\n"
    mp3 = {f"00/{i}.mp3": wav_bytes(tone(s, seed=i), fmt="MP3", subtype=None)
           for i, s in ((100, 1.5), (200, 1.0), (300, 1.0))}
    return tsv.encode(), make_tar(mp3)


def rirs_noises_zip() -> bytes:
    """OpenSLR 28 layout: simulated RIRs, real RIRs + isotropic noises, point-source noises."""
    ir = lambda seed: wav_bytes(tone(0.3, sr=16_000, channels=1, seed=seed), sr=16_000, subtype="PCM_16")  # noqa: E731
    return make_zip({
        "RIRS_NOISES/simulated_rirs/smallroom/Room001/Room001-00001.wav": ir(1),
        "RIRS_NOISES/simulated_rirs/largeroom/Room002/Room002-00001.wav": ir(2),
        "RIRS_NOISES/real_rirs_isotropic_noises/air_type1_air_binaural_booth_0_1_1.wav": ir(3),
        "RIRS_NOISES/real_rirs_isotropic_noises/RVB2014_type1_noise_largeroom1_1.wav": ir(4),
        "RIRS_NOISES/pointsource_noises/noise-free-sound-0001.wav": ir(5),
        "RIRS_NOISES/pointsource_noises/noise_list": b"noise-free-sound-0001.wav\n",
    })


def local_folder(root: Path) -> Path:
    """Two readable files (wav, flac in a sub-folder), a text file, and one corrupt 'wav'."""
    (root / "sub").mkdir(parents=True)
    (root / "a.wav").write_bytes(wav_bytes(tone(1.0, seed=1), subtype="PCM_16"))
    (root / "sub" / "b.flac").write_bytes(wav_bytes(tone(0.5, seed=2), fmt="FLAC", subtype="PCM_16"))
    (root / "notes.txt").write_text("not audio")
    (root / "broken.wav").write_bytes(b"RIFF0000WAVEjunkjunkjunk")
    return root


@pytest.fixture
def corpora():
    """The builders above, for test modules (conftest is not importable under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        SR=SR, tone=tone, wav_bytes=wav_bytes, make_zip=make_zip, make_tar=make_tar, sha256=sha256,
        musdb_zip=musdb_zip, moises_members=moises_members, MOISES_TRACKS=MOISES_TRACKS, fsl_zip=fsl_zip, FSL_LOOPS=FSL_LOOPS,
        jamendo_files=jamendo_files, rirs_noises_zip=rirs_noises_zip, local_folder=local_folder,
    )
