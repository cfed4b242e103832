"""The fault suite's shared tally, and the one summary line printed when the run ends.

Every test takes the ``tally`` fixture and records what it tried: bad inputs fed to the system
(``tally.inputs``), faults injected into a running system (``tally.fault``), and, wherever samples can
go missing or twice, the expected and the delivered keys (``tally.samples``), from which lost and
duplicated are counted rather than asserted to be zero by hand. At the end of the session::

    faults: inputs_tried=N faults_injected=M lost=L duplicated=D

Also here: ``tmpfs`` (mount a small tmpfs, unmounted at teardown; we run as root) and ``mlflow_server``
(one real `orchestration/mlflow_server.sh` server per session, which a test may SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Tally:
    inputs_tried: int = 0
    faults_injected: int = 0
    lost: int = 0
    duplicated: int = 0
    tests: int = 0
    log: list[str] = field(default_factory=list)

    def inputs(self, n: int, what: str = "") -> None:
        """Count ``n`` bad or hostile inputs fed to the system."""
        self.inputs_tried += n
        self.log.append(f"inputs +{n}: {what}")

    def fault(self, what: str, n: int = 1) -> None:
        """Count a fault injected into a run (a kill, a full disk, a corrupted artefact...)."""
        self.faults_injected += n
        self.log.append(f"fault +{n}: {what}")

    def samples(self, expected: Iterable[str], *views: Sequence[str]) -> tuple[int, int]:
        """Count lost and duplicated keys; returns (lost, duplicated).

        Each view is one way of listing what was delivered (the keys in the shard files, the catalogue's
        links, every file on disk...), with repeats. A key missing from a view is lost; a key listed twice,
        or one that was not expected (stale or bad data let in), is a duplicate. The worst view counts.
        """
        want = set(expected)
        lost = duplicated = 0
        for view in views:
            got = list(view)
            lost = max(lost, len(want - set(got)))
            duplicated = max(duplicated, len(got) - len(set(got)) + len(set(got) - want))
        self.lost += lost
        self.duplicated += duplicated
        return lost, duplicated


TALLY = Tally()


@pytest.fixture
def tally() -> Tally:
    TALLY.tests += 1
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if TALLY.tests:
        terminalreporter.write_line(
            f"faults: inputs_tried={TALLY.inputs_tried} faults_injected={TALLY.faults_injected} "
            f"lost={TALLY.lost} duplicated={TALLY.duplicated}")


@pytest.fixture
def tmpfs(tmp_path):
    """Mount factory: ``tmpfs(size_bytes)`` mounts a fresh tmpfs under tmp_path (we run as root); every
    mount is unmounted at teardown, even when the test fails."""
    import subprocess

    mounts: list[Path] = []

    def mount(size: int) -> Path:
        d = tmp_path / f"tmpfs{len(mounts)}"
        d.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {out.stderr.strip()}")
        mounts.append(d)
        return d

    yield mount
    for d in reversed(mounts):
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


@dataclass
class MlflowServer:
    """A real `orchestration/mlflow_server.sh` server (sqlite store) that a test may kill."""

    port: int
    dir: Path
    env: dict

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_uri(self) -> str:
        """The server's backend store, readable without the server."""
        return f"sqlite:///{self.dir}/mlflow.db"

    def pid(self) -> int | None:
        try:
            return int((self.dir / "mlflow-server.pid").read_text())
        except (OSError, ValueError):
            return None

    def _script(self, cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(REPO / "orchestration" / "mlflow_server.sh"), cmd, "--port",
                               str(self.port), "--dir", str(self.dir)], env=self.env, capture_output=True,
                              text=True, timeout=180)

    def start(self) -> None:
        out = self._script("start")
        assert out.returncode == 0, out.stderr

    def kill(self) -> None:
        """SIGKILL the server and its workers (the script starts it with setsid: its own group)."""
        pid = self.pid()
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self._script("stop")
        self.kill()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One MLflow server for the session; stopped (or killed) at the end whatever the tests did."""
    from net import free_port

    server = MlflowServer(free_port(), tmp_path_factory.mktemp("mlflow"), {**os.environ, "PYTHON": sys.executable})
    server.start()
    try:
        yield server
    finally:
        server.stop()
