"""Fetch Debian's Hydrogen drum-kit packages and unpack them without root.

`apt-get download` needs no root: it only writes the `.deb` into the current folder. A `.deb`
is an `ar` archive (`debian-binary`, `control.tar.*`, `data.tar.*`); we read the `ar` layout
ourselves and hand the data member to `tarfile`, so no `dpkg` is needed unless the data
member is zstd-compressed and this Python cannot decompress zstd.

Every archive member is checked before it is written: absolute paths, `..` components and
links that point outside the target folder raise `UnsafeArchiveError`. Everything is cached
under one folder, with a marker file written last, so a second call does no work.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import logging
import lzma
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

log = logging.getLogger(__name__)

HYDROGEN_PACKAGES = ("hydrogen-data", "hydrogen-drumkits")
# Inside the unpacked packages: kits, demo songs, and the DEP-5 copyright files that name
# the licence of kits whose drumkit.xml does not.
HYDROGEN_DATA_SUBDIR = "usr/share/hydrogen/data"
HYDROGEN_DOC_SUBDIR = "usr/share/doc"

_AR_MAGIC = b"!<arch>\n"
_AR_HEADER_LEN = 60
_DONE_MARKER = ".unpacked"


class DebError(RuntimeError):
    """A package could not be fetched or is not a valid `.deb`."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the target folder."""


@dataclasses.dataclass(frozen=True)
class ArMember:
    """One member of an `ar` archive.

    Attributes:
        name: member name, with the GNU trailing `/` removed.
        offset: byte offset of the member's data in the archive file.
        size: data size in bytes.
    """

    name: str
    offset: int
    size: int


def read_ar_members(path: str | Path) -> list[ArMember]:
    """List the members of an `ar` archive (the container format of a `.deb`).

    Supports the common and GNU name forms (`name/`) and BSD long names (`#1/<len>`, the
    name stored at the start of the data).

    Raises:
        DebError: if the file is not an `ar` archive or a header is malformed or truncated.
    """
    path = Path(path)
    total = path.stat().st_size
    members: list[ArMember] = []
    with open(path, "rb") as f:
        if f.read(len(_AR_MAGIC)) != _AR_MAGIC:
            raise DebError(f"{path}: not an ar archive (bad magic)")
        pos = len(_AR_MAGIC)
        while pos < total:
            f.seek(pos)
            header = f.read(_AR_HEADER_LEN)
            if len(header) < _AR_HEADER_LEN or header[58:60] != b"`\n":
                raise DebError(f"{path}: malformed ar header at byte {pos}")
            name = header[0:16].decode("ascii", "replace").rstrip()
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError as exc:
                raise DebError(f"{path}: bad member size at byte {pos}") from exc
            data_start = pos + _AR_HEADER_LEN
            if name.startswith("#1/"):  # BSD: the real name is the first <len> bytes of data
                name_len = int(name[3:])
                name = f.read(name_len).decode("utf-8", "replace").rstrip("\0")
                data_start, size = data_start + name_len, size - name_len
            if data_start + size > total:
                raise DebError(f"{path}: member {name!r} is truncated")
            members.append(ArMember(name.rstrip("/"), data_start, size))
            pos = data_start + size + (size % 2)  # members are padded to an even offset
    return members


def _read_member(path: Path, member: ArMember) -> bytes:
    with open(path, "rb") as f:
        f.seek(member.offset)
        return f.read(member.size)


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    """Refuse members that would land outside `dest` (path traversal, absolute, bad links)."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise UnsafeArchiveError(f"archive member {name!r} escapes the target folder")
    target = (dest / name).resolve()
    if not target.is_relative_to(dest):
        raise UnsafeArchiveError(f"archive member {name!r} escapes the target folder")
    if member.issym() or member.islnk():
        link = member.linkname
        base = target.parent if member.issym() else dest
        if link.startswith("/") or not (base / link).resolve().is_relative_to(dest):
            raise UnsafeArchiveError(f"archive link {name!r} -> {link!r} escapes the target folder")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {name!r} is a device or fifo")


def safe_extract_tar(
    fileobj: BinaryIO, dest: str | Path, mode: str = "r:*", prefixes: tuple[str, ...] = ()
) -> int:
    """Extract a tar stream into `dest`, refusing members that escape it.

    All members are checked before anything is written, so a bad archive leaves no partial
    output from itself.

    Args:
        fileobj: the tar data.
        dest: target folder (created).
        mode: `tarfile` mode, e.g. "r:gz", "r:xz" or "r:*" (detect).
        prefixes: if given, only members whose normalised path starts with one of these.

    Returns:
        The number of regular files written.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    try:
        tar = tarfile.open(fileobj=fileobj, mode=mode)  # noqa: SIM115 (closed by the `with` below)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DebError(f"not a readable tar archive ({exc})") from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DebError(f"not a readable tar archive ({exc})") from exc
        for m in members:
            _check_member(m, dest)
        if prefixes:
            members = [m for m in members if _normalise(m.name).startswith(prefixes)]
        # The "data" filter (PEP 706) repeats our checks and also drops setuid bits.
        tar.extractall(dest, members=members, filter="data")
    return sum(1 for m in members if m.isfile())


def _normalise(name: str) -> str:
    return name[2:] if name.startswith("./") else name.lstrip("/")


def _zstd_decompressor() -> Callable[[bytes], bytes] | None:
    """Return a zstd decompress function if this Python has one, else None."""
    try:
        from compression import zstd  # Python >= 3.14

        return zstd.decompress
    except ImportError:
        pass
    try:
        import zstandard  # optional third-party module

        return lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except ImportError:
        return None


# Decompress the whole data member once: tarfile over a compressed stream re-decompresses
# from the start on every backward seek, and we read the member list before extracting.
_DECOMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".tar": lambda data: data,
    ".gz": gzip.decompress,
    ".xz": lzma.decompress,
    ".bz2": bz2.decompress,
}


def extract_deb(deb: str | Path, dest: str | Path, prefixes: tuple[str, ...] = ()) -> int:
    """Unpack the data part of a `.deb` into `dest` (like `dpkg-deb -x`, but in Python).

    Args:
        deb: the `.deb` file.
        dest: target folder.
        prefixes: only unpack members under these paths (e.g. "usr/share/hydrogen/").

    Returns:
        The number of regular files written.

    Raises:
        DebError: not a `.deb`, no data member, or an unknown compression.
        UnsafeArchiveError: a member escapes `dest`.
    """
    deb = Path(deb)
    members = {m.name: m for m in read_ar_members(deb)}
    if "debian-binary" not in members:
        raise DebError(f"{deb}: ar archive without debian-binary, not a .deb")
    data = [m for name, m in members.items() if name.startswith("data.tar")]
    if not data:
        raise DebError(f"{deb}: no data.tar.* member")
    member = data[0]
    suffix = Path(member.name).suffix
    decompress = _zstd_decompressor() if suffix == ".zst" else _DECOMPRESSORS.get(suffix)
    if decompress is None:
        if suffix == ".zst":  # no zstd in this Python: dpkg-deb knows how
            return _dpkg_deb_extract(deb, Path(dest))
        raise DebError(f"{deb}: unsupported data member {member.name!r}")
    try:
        raw = decompress(_read_member(deb, member))
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise DebError(f"{deb}: cannot decompress {member.name} ({exc})") from exc
    return safe_extract_tar(io.BytesIO(raw), dest, "r:", prefixes)


def _dpkg_deb_extract(deb: Path, dest: Path) -> int:
    """Fallback for zstd data members: let dpkg-deb unpack (it checks paths itself)."""
    if shutil.which("dpkg-deb") is None:
        raise DebError(f"{deb}: data member is zstd and neither zstd support nor dpkg-deb is available")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True, capture_output=True)
    return sum(1 for p in dest.rglob("*") if p.is_file())


def extract_h2drumkit(archive: str | Path, dest: str | Path) -> Path:
    """Unpack a Hydrogen `.h2drumkit` (a gzip tarball of one kit folder) into `dest`.

    Returns:
        The folder holding the kit's `drumkit.xml`.
    """
    archive, dest = Path(archive), Path(dest)
    with open(archive, "rb") as f:
        safe_extract_tar(f, dest, "r:*")
    found = sorted(dest.rglob("drumkit.xml"))
    if not found:
        raise DebError(f"{archive}: no drumkit.xml inside")
    return found[0].parent


def _find_deb(folder: Path, package: str) -> Path | None:
    debs = sorted(folder.glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


def _apt_download(packages: list[str], folder: Path, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["apt-get", "download", *packages],
        check=False,  # the caller reads the exit status and stderr
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def download_debs(
    packages: tuple[str, ...] = HYDROGEN_PACKAGES, folder: str | Path = ".", timeout_s: float = 900.0
) -> list[Path]:
    """Download `.deb` files with `apt-get download` (no root needed), reusing cached ones.

    `apt-get update` is run (and the download retried) only if the first try fails because
    apt has no package lists yet.

    Raises:
        DebError: apt-get is missing or the download failed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if _find_deb(folder, p) is None]
    if missing:
        if shutil.which("apt-get") is None:
            raise DebError("apt-get is not available on this machine")
        try:
            result = _apt_download(missing, folder, timeout_s)
            if result.returncode != 0 and "Unable to locate package" in result.stderr:
                log.info("apt has no lists for %s; running apt-get update", missing)
                subprocess.run(["apt-get", "update"], check=False, capture_output=True, timeout=timeout_s)
                result = _apt_download(missing, folder, timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise DebError(f"apt-get timed out after {timeout_s} s") from exc
        if result.returncode != 0:
            raise DebError(f"apt-get download {' '.join(missing)} failed: {result.stderr.strip()[-500:]}")
    debs = [_find_deb(folder, p) for p in packages]
    absent = [p for p, d in zip(packages, debs) if d is None]
    if absent:
        raise DebError(f"apt-get reported success but no .deb for {absent} in {folder}")
    return [d for d in debs if d is not None]


@dataclasses.dataclass(frozen=True)
class HydrogenTree:
    """Where the unpacked Hydrogen data lives.

    Attributes:
        root: the unpacked file-system tree (holds `usr/share/...`).
        data_dir: `<root>/usr/share/hydrogen/data` (holds `drumkits/` and `demo_songs/`).
        seconds: time spent fetching and unpacking (0.0 when everything was cached).
    """

    root: Path
    data_dir: Path
    seconds: float

    @property
    def kit_dirs(self) -> list[Path]:
        """Kit folders (each has a drumkit.xml), sorted by name."""
        return sorted(p.parent for p in (self.data_dir / "drumkits").glob("*/drumkit.xml"))

    @property
    def song_files(self) -> list[Path]:
        """All `.h2song` files in the packages, sorted."""
        return sorted(self.data_dir.rglob("*.h2song"))

    @property
    def copyright_files(self) -> list[Path]:
        """Debian DEP-5 copyright files of the packages."""
        return sorted((self.root / HYDROGEN_DOC_SUBDIR).glob("hydrogen*/copyright"))


def fetch_hydrogen(cache_dir: str | Path, packages: tuple[str, ...] = HYDROGEN_PACKAGES) -> HydrogenTree:
    """Download and unpack the Hydrogen kit packages into `cache_dir` (cached).

    Layout: `<cache_dir>/debs/*.deb` and `<cache_dir>/root/usr/share/...`. A marker file in
    `root/` is written last, so an interrupted unpack is redone and a finished one is not.
    """
    cache_dir = Path(cache_dir)
    root = cache_dir / "root"
    marker = root / _DONE_MARKER
    want = "\n".join(packages)
    if marker.exists() and marker.read_text() == want:
        return HydrogenTree(root, root / HYDROGEN_DATA_SUBDIR, 0.0)
    start = time.perf_counter()
    debs = download_debs(packages, cache_dir / "debs")
    if root.exists():  # a previous unpack was interrupted: start clean
        shutil.rmtree(root)
    for deb in debs:
        n = extract_deb(deb, root, prefixes=("usr/share/hydrogen/", "usr/share/doc/"))
        log.info("unpacked %s: %d files", deb.name, n)
    marker.write_text(want)
    return HydrogenTree(root, root / HYDROGEN_DATA_SUBDIR, time.perf_counter() - start)


__all__ = [
    "HYDROGEN_PACKAGES",
    "ArMember",
    "DebError",
    "HydrogenTree",
    "UnsafeArchiveError",
    "download_debs",
    "extract_deb",
    "extract_h2drumkit",
    "fetch_hydrogen",
    "read_ar_members",
    "safe_extract_tar",
]
