"""Download stage: resumable, verified HTTP(S) downloads and safe archive extraction.

* `download(url, dest, size=, sha256=, md5=)` writes to `dest.part`, resumes it with an HTTP Range
  request after a cut connection, retries transient failures (connection errors, timeouts,
  HTTP 408/425/429/5xx) with exponential backoff, checks the expected size, sha256 and md5 (Zenodo
  publishes only md5), and only then renames `.part` to `dest`. A file under its final name is therefore always complete; a
  second call finds it and fetches nothing.
* `extract(archive, target_dir)` unpacks zip and tar (gz/bz2/xz) archives into a temporary folder
  renamed at the end, and refuses members that would land outside the target: `..` components,
  absolute paths, links pointing outside, device files.

Client errors other than 408/425/429 (404, 403, ...) are not retried: asking again gives the
same answer.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:  # only for hints: base imports this module lazily
    from pipelines.sources.base import RawFileRow, RemoteFile

RETRY_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")


class DownloadError(RuntimeError):
    """A download failed for good (after retries, or on a non-retryable HTTP error)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected size or sha256."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder."""


@dataclass(frozen=True)
class DownloadConfig:
    """How hard to try.

    Attributes:
        retries: failed attempts allowed in a row (an attempt that received bytes resets the count).
        backoff_s: first wait; doubled after each failure, capped at `backoff_max_s`.
        timeout_s: socket timeout of one request (connect and each read).
        chunk_bytes: read size; also how often the progress bar moves.
        progress: show a tqdm bar.
    """

    retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 60.0
    chunk_bytes: int = 1 << 20
    progress: bool = True
    user_agent: str = "tria-pipelines/1.0"

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0 or self.chunk_bytes <= 0:
            raise ValueError(f"invalid DownloadConfig: {self}")


@dataclass(frozen=True)
class DownloadResult:
    """Where the verified file is, and how many bytes this call fetched (0 when skipped)."""

    path: Path
    size: int
    sha256: str
    fetched_bytes: int
    skipped: bool


class _Retryable(Exception):
    def __init__(self, message: str, received: int = 0) -> None:
        super().__init__(message)
        self.received = received


def _digests(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[str, str]:
    """Hex (sha256, md5) of a file, from one read."""
    import hashlib

    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def md5_file(path: str | os.PathLike) -> str:
    """Hex md5 of a file (only to compare with a published md5, never as an id)."""
    return _digests(path)[1]


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _write_sidecar(dest: Path, digest: str, size: int, md5: str) -> None:
    _sidecar(dest).write_text(f"{digest}  {size}  {md5}\n")


def _read_sidecar(dest: Path) -> tuple[str, str | None] | None:
    """`(sha256, md5)` recorded at verification, if the file still has the recorded size."""
    try:
        fields = _sidecar(dest).read_text().split()
        digest, size = fields[0], int(fields[1])
    except (OSError, ValueError, IndexError):
        return None
    if size != dest.stat().st_size:
        return None
    return digest, fields[2] if len(fields) > 2 else None


def _verify(path: Path, url: str, size: int | None, sha256: str | None, md5: str | None = None) -> tuple[str, str]:
    """Check size, sha256 and md5 (each when known); returns the actual (sha256, md5)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(f"{url}: expected {size} bytes, got {actual_size} ({path})")
    digest, actual_md5 = _digests(path)
    if sha256 is not None and digest != sha256.lower():
        raise ChecksumError(f"{url}: sha256 mismatch: expected {sha256}, got {digest} ({path})")
    if md5 is not None and actual_md5 != md5.lower():
        raise ChecksumError(f"{url}: md5 mismatch: expected {md5}, got {actual_md5} ({path})")
    return digest, actual_md5


def download(
    url: str,
    dest: str | os.PathLike,
    size: int | None = None,
    sha256: str | None = None,
    config: DownloadConfig | None = None,
    md5: str | None = None,
) -> DownloadResult:
    """Download `url` to `dest`, resumably, and verify it.

    Args:
        url: http(s) URL.
        dest: final local path; `dest.part` holds the partial download.
        size: expected size in bytes, if known.
        sha256: expected hex digest, if known.
        config: retries, timeouts, progress bar.
        md5: expected hex md5, if known (for hosts that publish only md5).

    Returns:
        The verified file; `skipped=True` if it was already complete.

    Raises:
        DownloadError: HTTP error that is not retried, or retries exhausted.
        ChecksumError: the content does not match `size`/`sha256`/`md5` (after retries for digests).
    """
    config = config or DownloadConfig()
    dest = Path(dest)
    if dest.exists():
        recorded = _read_sidecar(dest)
        if (recorded is None or (sha256 is not None and recorded[0] != sha256.lower())
                or (md5 is not None and recorded[1] != md5.lower())):
            digest, actual_md5 = _verify(dest, url, size, sha256, md5)
            _write_sidecar(dest, digest, dest.stat().st_size, actual_md5)
        else:
            digest = recorded[0]
        if size is not None and dest.stat().st_size != size:
            raise ChecksumError(f"{url}: {dest} has {dest.stat().st_size} bytes, expected {size}; delete it")
        return DownloadResult(dest, dest.stat().st_size, digest, 0, skipped=True)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    fetched, failures = 0, 0
    while True:
        try:
            fetched += _fetch_once(url, part, size, config)
        except _Retryable as err:
            fetched += err.received
            failures = 1 if err.received else failures + 1  # progress resets the count
            if failures > config.retries:
                raise DownloadError(f"{url}: giving up after {failures} failed attempts: {err}") from None
            time.sleep(min(config.backoff_s * 2 ** (failures - 1), config.backoff_max_s))
            continue
        try:
            digest, actual_md5 = _verify(part, url, size, sha256, md5)
            break
        except ChecksumError:
            # Bad bytes cannot be located in the file, so start over from zero.
            part.unlink(missing_ok=True)
            failures += 1
            if failures > config.retries:
                raise
            time.sleep(min(config.backoff_s * 2 ** (failures - 1), config.backoff_max_s))
    final_size = part.stat().st_size
    with open(part, "rb+") as f:
        os.fsync(f.fileno())
    _write_sidecar(dest, digest, final_size, actual_md5)
    os.replace(part, dest)  # only a verified file gets the final name
    return DownloadResult(dest, final_size, digest, fetched, skipped=False)


def _fetch_once(url: str, part: Path, size: int | None, config: DownloadConfig) -> int:
    """One request appending to `part` from its current length; returns bytes received.

    Raises `_Retryable` for transient failures (carrying the bytes received before them).
    """
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:  # not our file any more: start over
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return 0  # complete from an earlier attempt; the caller verifies it
    headers = {"User-Agent": config.user_agent}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        request = urllib.request.Request(url, headers=headers)
        response = urllib.request.urlopen(request, timeout=config.timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return 0  # the .part already holds the whole file: verification decides
        if err.code in RETRY_HTTP_CODES:
            raise _Retryable(f"HTTP {err.code} {err.reason}") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason} (not retried)") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _Retryable(f"connection failed: {err}") from None
    with response:
        start, total = _response_range(response, offset)
        if size is not None and total is not None and total != size:
            raise ChecksumError(f"{url}: server reports {total} bytes, expected {size}")
        return _copy_body(response, part, start, total, config, url)


def _response_range(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """Where the body starts in the file, and the file's total size if the server says."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == offset:
            return offset, int(match.group(3)) if match.group(3) != "*" else None
        return 0, None  # a range we did not ask for: restart rather than guess
    # 200: the server ignored Range (or we sent none), so the body is the whole file.
    return 0, int(length) if length is not None else None


def _copy_body(response: http.client.HTTPResponse, part: Path, start: int, total: int | None,
               config: DownloadConfig, url: str) -> int:
    received = 0
    with open(part, "r+b" if start and part.exists() else "wb") as f, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, desc=part.name[:-5][-40:],
        disable=not config.progress, leave=False,
    ) as bar:
        f.seek(start)
        f.truncate()
        while True:
            try:
                chunk = response.read(config.chunk_bytes)
            except (OSError, http.client.HTTPException) as err:
                raise _Retryable(f"connection lost at byte {start + received}: {err}", received) from None
            if not chunk:
                break
            f.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if total is not None and start + received < total:
        raise _Retryable(f"connection closed at byte {start + received} of {total}", received)
    return received


# ------------------------------------------------------------------------------ extraction


def archive_stem(filename: str) -> str | None:
    """`"musdb18hq.zip"` -> `"musdb18hq"`; None when the name is not an archive's."""
    lower = filename.lower()
    for suffix in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return filename[: -len(suffix)]
    return None


def _safe_target(root: Path, name: str) -> Path:
    """The path a member would be written to, or `UnsafeArchiveError` if outside `root`."""
    clean = name.replace("\\", "/")
    if not clean or clean.startswith("/") or re.match(r"^[A-Za-z]:", clean) or "\x00" in clean:
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path; refusing to extract")
    if ".." in PurePosixPath(clean).parts:
        raise UnsafeArchiveError(f"archive member {name!r} contains '..' and would escape the target")
    target = (root / clean).resolve()
    if not target.is_relative_to(root.resolve()):
        raise UnsafeArchiveError(f"archive member {name!r} resolves outside {root}")
    return target


def _check_link(root: Path, member: str, link: str, relative_to_member: bool) -> None:
    """A link member may only point inside `root` (symlinks relative to their folder)."""
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        raise UnsafeArchiveError(f"archive member {member!r} links to absolute path {link!r}")
    base = PurePosixPath(member.replace("\\", "/")).parent if relative_to_member else PurePosixPath()
    resolved = os.path.normpath(str(base / link.replace("\\", "/")))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise UnsafeArchiveError(f"archive member {member!r} links outside the target ({link!r})")


def extract(archive: str | os.PathLike, target_dir: str | os.PathLike) -> Path:
    """Extract a zip or tar archive into `target_dir`, all or nothing.

    Members go to `target_dir.extracting` first, which is renamed to `target_dir` when every
    member is written, so an interrupted extraction is redone, never half-used. An existing
    `target_dir` means the work is done, and nothing happens.

    Raises:
        UnsafeArchiveError: a member would land outside the target (before anything is written).
        ValueError: the file is not a zip or tar archive.
    """
    archive, target = Path(archive), Path(target_dir)
    if target.exists():
        return target
    tmp = target.with_name(target.name + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp)
        else:
            raise ValueError(f"{archive} is neither a zip nor a tar archive")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, target)
    return target


def _extract_zip(archive: Path, root: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        links = {}
        for info in infos:  # check everything before writing anything
            _safe_target(root, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                links[info.filename] = zf.read(info).decode("utf-8")
                _check_link(root, info.filename, links[info.filename], relative_to_member=True)
        for info in infos:
            dest = _safe_target(root, info.filename)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if info.filename in links:
                os.symlink(links[info.filename], dest)
                continue
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


def _extract_tar(archive: Path, root: Path) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:  # check everything before writing anything
            _safe_target(root, m.name)
            if m.issym():
                _check_link(root, m.name, m.linkname, relative_to_member=True)
            elif m.islnk():
                _check_link(root, m.name, m.linkname, relative_to_member=False)
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(
                    f"archive member {m.name!r} is a device or fifo; refusing to extract")
        # The "data" filter (Python >= 3.11.4) re-checks the same rules and drops unsafe modes.
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tf.extractall(root, members=members, **kwargs)


# ------------------------------------------------------------------------------ stage entry


def fetch_and_extract(
    source: str, remote: "RemoteFile", dest_dir: Path, config: DownloadConfig
) -> "RawFileRow":
    """Download one file of a source into `dest_dir/downloads/` and extract it if an archive.

    Archives are extracted to `dest_dir/extracted/<archive name without suffix>/`.
    """
    from pipelines.sources.base import RawFileRow

    if "/" in remote.filename or "\\" in remote.filename or remote.filename in ("", ".", ".."):
        raise ValueError(f"download filename must be a plain file name, got {remote.filename!r}")
    result = download(remote.url, Path(dest_dir) / "downloads" / remote.filename,
                      size=remote.size, sha256=remote.sha256, config=config, md5=remote.md5)
    stem = archive_stem(remote.filename)
    if remote.extract and stem is not None:
        extract(result.path, Path(dest_dir) / "extracted" / stem)
    return RawFileRow(source=source, name=f"downloads/{remote.filename}", path=str(result.path),
                      size=result.size, sha256=result.sha256, url=remote.url)
