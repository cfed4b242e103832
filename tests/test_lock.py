"""The hashed locks in requirements/lock/ match the top-level requirements they were compiled from.

`make` installs only from the locks, so a package added to requirements/base.txt without `make lock`
would silently not be installed: these tests say which one and what to run.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REQS = Path(__file__).resolve().parents[1] / "requirements"
LOCK = REQS / "lock"
# What the CUDA lock may have that the CPU lock has not: the CUDA libraries torch pulls from PyPI.
CUDA_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from a `uv pip compile --generate-hashes` file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            name = canonicalize_name(m[1])
            pins[name] = (m[2], [])
        elif (h := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line)) and name:
            pins[name][1].append(h[1])
    return pins


def read_requirements(path: Path) -> list[Requirement]:
    reqs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            reqs += read_requirements(path.parent / line[3:].strip())
        elif line:
            reqs.append(Requirement(line))
    return reqs


@pytest.mark.parametrize("variant", ["cpu", "cuda"])
def test_every_top_level_requirement_is_locked(variant):
    pins = read_lock(LOCK / f"{variant}.txt")
    inputs = [REQS / "base.txt", REQS / "tools.txt", REQS / f"torch-{variant}.txt"]
    stale = []
    for req in (r for f in inputs for r in read_requirements(f)):
        pin = pins.get(canonicalize_name(req.name))
        if pin is None or not req.specifier.contains(Version(pin[0]), prereleases=True):
            stale.append(f"{req} (lock: {pin[0] if pin else 'absent'})")
    assert not stale, f"requirements/lock/{variant}.txt is stale for {stale}: run `make lock` and commit"


def test_no_deps_and_uv_locks_pin_exactly_their_inputs():
    for src, lock in [("nodeps.txt", "nodeps.txt"), ("uv.txt", "uv.txt")]:
        wanted = {canonicalize_name(r.name): str(r.specifier) for r in read_requirements(REQS / src)}
        got = {name: f"=={v}" for name, (v, _) in read_lock(LOCK / lock).items()}
        assert got == wanted, f"requirements/lock/{lock} does not match requirements/{src}: run `make lock`"


def test_every_locked_package_has_a_hash():
    for path in LOCK.glob("*.txt"):
        unhashed = [name for name, (_, hashes) in read_lock(path).items() if not hashes]
        assert not unhashed, f"{path.name}: no --hash for {unhashed}"


def test_cpu_and_cuda_locks_differ_only_in_torch_and_its_cuda_libraries():
    cpu, cuda = read_lock(LOCK / "cpu.txt"), read_lock(LOCK / "cuda.txt")
    assert cpu["torch"][0] == "2.13.0+cpu" and cuda["torch"][0] == "2.13.0"
    assert not set(cpu) - set(cuda), "the CPU lock has packages that the CUDA lock lacks"
    extra = sorted(set(cuda) - set(cpu))
    assert extra and all(CUDA_ONLY.match(n) for n in extra), f"unexpected CUDA-only packages: {extra}"
    differ = {n: (cpu[n][0], cuda[n][0]) for n in set(cpu) & set(cuda) - {"torch"} if cpu[n][0] != cuda[n][0]}
    assert not differ, f"the two locks pin different versions: {differ}"


def _installed_variant() -> str | None:
    stamps = sorted(Path(sys.prefix).glob(".installed-*"))
    return stamps[0].name.removeprefix(".installed-") if len(stamps) == 1 else None


@pytest.mark.skipif(_installed_variant() is None, reason="this Python's venv was not made by `make` from the locks")
def test_the_running_venv_holds_exactly_its_lock():
    pins = read_lock(LOCK / f"{_installed_variant()}.txt") | read_lock(LOCK / "nodeps.txt")
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions()}
    installed.pop("tria-scale", None)  # this project, installed editable on top of the lock
    # packages installed later by hand (not in the lock) are not checked, only that the lock is installed
    mismatched = {n: (v, pins[n][0]) for n, v in installed.items() if n in pins and pins[n][0] != v}
    missing = sorted(set(pins) - set(installed))
    assert not mismatched and not missing, f"installed vs lock: {mismatched}; not installed: {missing}"
