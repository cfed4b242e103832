"""Hostile inputs: archives that escape their folder, checkpoints that run code, SQL in query values,
YAML that constructs Python objects, and services that must listen on the loopback only."""

from __future__ import annotations

import io
import os
import pickle
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from faults.fault_tools import descendants

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.faults


# ------------------------------------------------------------------------------------------ archives


def _zip(members: list[tuple[str, bytes, int | None]]) -> bytes:
    """(name, data, unix mode or None) -> zip bytes; a mode with S_IFLNK makes a symlink member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _tar(members: list[tuple[str, bytes, bytes, str]]) -> bytes:
    """(name, type, data, linkname) -> tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def hostile_archives(tmp: Path) -> dict[str, bytes]:
    """Archives whose extraction would write (or link) outside the target folder."""
    absolute = str(tmp / "abs" / "EVIL_abs.txt")
    ok = ("fine/readme.txt", b"harmless", None)
    link = stat.S_IFLNK | 0o777
    f, sym, hard = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
    return {
        "zip_dotdot.zip": _zip([ok, ("../EVIL_zip_dotdot.txt", b"x", None)]),
        "zip_nested_dotdot.zip": _zip([ok, ("a/b/../../../EVIL_zip_nested.txt", b"x", None)]),
        "zip_absolute.zip": _zip([ok, (absolute, b"x", None)]),
        "zip_backslash_dotdot.zip": _zip([ok, ("..\\EVIL_zip_backslash.txt", b"x", None)]),
        "zip_drive_letter.zip": _zip([ok, ("C:/EVIL_zip_drive.txt", b"x", None)]),
        "zip_symlink_up.zip": _zip([ok, ("up", b"../..", link)]),
        "zip_symlink_absolute.zip": _zip([ok, ("passwd", b"/etc/passwd", link)]),
        "tar_dotdot.tar": _tar([("fine.txt", f, b"x", ""), ("../EVIL_tar_dotdot.txt", f, b"x", "")]),
        "tar_absolute.tar": _tar([(absolute, f, b"x", "")]),
        "tar_symlink_absolute.tar": _tar([("passwd", sym, b"", "/etc/passwd")]),
        "tar_symlink_up.tar": _tar([("d", sym, b"", "../../outside")]),
        "tar_symlink_then_write_through.tar": _tar([("d", sym, b"", ".."), ("d/EVIL_tar_through.txt", f, b"x", "")]),
        "tar_hardlink_outside.tar": _tar([("h", hard, b"", "../../etc/passwd")]),
        "tar_fifo.tar": _tar([("pipe", tarfile.FIFOTYPE, b"", "")]),
        "tar_char_device.tar": _tar([("zero", tarfile.CHRTYPE, b"", "")]),
    }


def test_archive_members_outside_the_target_are_refused(tmp_path, tally):
    from pipelines.stages.download import UnsafeArchiveError, extract

    archives = hostile_archives(tmp_path)
    tally.inputs(len(archives), "hostile archive members")
    for name, data in archives.items():
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        target = tmp_path / "out" / name / "extracted"
        with pytest.raises(UnsafeArchiveError):
            extract(path, target)
        assert not target.exists() and not target.with_name("extracted.extracting").exists(), name
    escaped = [p for p in tmp_path.rglob("EVIL*")] + [p for p in tmp_path.rglob("*") if p.is_symlink()]
    assert not escaped, f"written before the refusal: {escaped}"
    # The same members under safe names extract: the refusals are about the paths, not the format.
    safe = tmp_path / "in" / "safe.zip"
    safe.write_bytes(_zip([("fine/readme.txt", b"harmless", None), ("fine/link", b"readme.txt", stat.S_IFLNK | 0o777)]))
    out = extract(safe, tmp_path / "out" / "safe")
    assert (out / "fine" / "readme.txt").read_bytes() == b"harmless" and (out / "fine" / "link").is_symlink()


# --------------------------------------------------------------------------------------- checkpoints


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_load_with_weights_only_and_never_run_code(tmp_path, tally):
    from tria.checkpoint import CheckpointError, load_checkpoint

    marker = tmp_path / "code_ran"
    torch_zip = tmp_path / "torch_format.pt"
    torch.save({"format": "tria-checkpoint-v1", "model": {}, "payload": _RunsCode(marker)}, torch_zip)
    legacy = tmp_path / "plain_pickle.pt"
    legacy.write_bytes(pickle.dumps({"format": "tria-checkpoint-v1", "payload": _RunsCode(marker)}))
    assert not marker.exists()
    tally.inputs(2, "checkpoints whose unpickling runs os.system")
    for path in (torch_zip, legacy):
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            load_checkpoint(path)
        assert not marker.exists(), f"loading {path.name} ran the payload"
    # Proof that the payload is live: a plain unpickle runs it.
    pickle.loads(legacy.read_bytes())
    assert marker.exists()


# ---------------------------------------------------------------------------------------- catalogue

INJECTIONS = [
    "x'); DROP TABLE excerpts; --",
    "' OR '1'='1",
    "0123\"; DROP TABLE stems; --",
    "'; DELETE FROM shards; --",
    "'; ATTACH '/tmp/evil.duckdb' AS evil; CREATE TABLE evil.t(a INT); --",
    "%s%s%s%n",
    "\x00'; DROP TABLE rejects; --",
]


def _snapshot(cat) -> dict[str, int]:
    return {t: cat.count(t) for t in cat.tables()}


def test_catalogue_query_values_are_bound(tmp_path, capsys, tally):
    from pipelines.catalogue import Catalogue, StemRow
    from pipelines.catalogue import main as catalogue_main
    from shard_fixtures import make_corpus

    db = make_corpus(tmp_path)
    with Catalogue(db) as cat:
        before = _snapshot(cat)
        assert before["excerpts"] > 0 and before["shards"] > 0
        tally.inputs(len(INJECTIONS) * 5 + 2, "SQL injection values and names")
        for value in INJECTIONS:
            assert cat.query("excerpt_lineage", excerpt_id=value).rows == ()  # a value, matched literally
            assert cat.query("rejects_by_reason", stage=value).rows == ()
            assert cat.query("shards_of_split", split=value).rows == ()
            assert cat.query("training_run_inputs", run_id=value).rows == ()
            assert cat.rows(StemRow, source=value) == []
        with pytest.raises(ValueError, match="unknown query"):
            cat.query("summary; DROP TABLE stems")
        with pytest.raises(ValueError, match="bad parameter name"):
            cat.query("excerpt_lineage", **{"x = 1; DROP TABLE stems; SET VARIABLE y": "1"})
        assert _snapshot(cat) == before, "a query changed the catalogue"
        assert "evil" not in {r[0] for r in cat.execute("SELECT database_name FROM duckdb_databases()").rows}
    # The CLI binds too (read-only connection, same queries).
    assert catalogue_main(["excerpt_lineage", "--db", str(db), "--param", f"excerpt_id={INJECTIONS[1]}"]) == 0
    assert "(0 rows)" in capsys.readouterr().out
    with Catalogue(db, read_only=True) as cat:
        assert _snapshot(cat) == before
    assert not Path("/tmp/evil.duckdb").exists()


# ---------------------------------------------------------------------------------------------- YAML

YAML_PAYLOADS = {
    "apply": "a: !!python/object/apply:os.system ['touch {m}']\n",
    "new": "a: !!python/object/new:os.system ['touch {m}']\n",
    "subprocess": "a: !!python/object/apply:subprocess.check_call [['touch', '{m}']]\n",
    "name": "a: !!python/name:os.system\n",
    "module": "a: !!python/module:os\n",
    "top_level": "!!python/object/apply:os.system ['touch {m}']\n",
}


def test_configs_use_safe_yaml_loaders(tmp_path, tally):
    import yaml

    from pipelines.run import load_pipeline_config
    from pipelines.sources import load_registry
    from tria.config import ConfigError, apply_overrides, load_yaml
    from tria.train import load_train_config

    marker = tmp_path / "code_ran"
    tally.inputs(len(YAML_PAYLOADS) * 5, "YAML with python/* tags")
    for name, text in YAML_PAYLOADS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text.format(m=marker))
        for loader in (load_yaml, lambda p: load_pipeline_config(str(p), []), lambda p: load_train_config(str(p), [])):
            with pytest.raises(ConfigError, match="not valid YAML"):
                loader(path)
        with pytest.raises(ConfigError, match="not valid YAML"):  # the same payload as a key=value override
            apply_overrides({}, [f"x={text.split(': ', 1)[-1].strip().format(m=marker)}"])
        registry = tmp_path / f"sources_{name}.yaml"
        registry.write_text("sources:\n  local_folder:\n    " + text.format(m=marker).replace("\n", "\n    "))
        with pytest.raises(yaml.YAMLError):
            load_registry(registry)
        assert not marker.exists(), f"{name}: a config load ran code"


# ------------------------------------------------------------------------------------------ services


def test_mlflow_server_listens_on_loopback_only(mlflow_server, tally):
    """orchestration/mlflow_server.sh: every socket its processes listen on is 127.0.0.1 (or ::1)."""
    pid = mlflow_server.pid()
    assert pid is not None, "the server is not running"
    pids = {pid, *descendants(pid)}
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    mine = [line.split() for line in out.splitlines() if any(f"pid={p}," in line for p in pids)]
    assert mine, f"no listening socket found for pids {sorted(pids)}:\n{out}"
    local = {fields[3] for fields in mine}
    assert f"127.0.0.1:{mlflow_server.port}" in local, local
    assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in local), f"listens beyond the loopback: {local}"
    tally.inputs(1, "service bind addresses")


def test_other_services_default_to_loopback():
    """The Gradio page (tria/app.py) and the Ray dashboard in orchestration/ray_local.sh bind 127.0.0.1 unless
    told otherwise. (Ray's GCS port itself listens on all interfaces by Ray's design; ray_local.sh says so.)"""
    from tria.app import build_parser

    assert build_parser().get_default("host") == "127.0.0.1"
    ray_script = (REPO / "orchestration" / "ray_local.sh").read_text()
    assert "--dashboard-host 127.0.0.1" in ray_script
    assert "--host 127.0.0.1" in (REPO / "orchestration" / "mlflow_server.sh").read_text()
