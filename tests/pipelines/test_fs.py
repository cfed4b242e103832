"""The filesystem layer on local paths and `file://` URIs (object stores go through the same code)."""

from __future__ import annotations

import pytest

from pipelines import fs


@pytest.mark.parametrize("as_uri", [False, True])
def test_write_read_list_rename(tmp_path, as_uri):
    base = f"file://{tmp_path}" if as_uri else str(tmp_path)
    target = fs.join(base, "a", "b", "x.bin")
    assert not fs.exists(target)
    fs.write_bytes(target, b"hello")  # parents are created
    assert fs.exists(target) and fs.size(target) == 5 and fs.read_bytes(target) == b"hello"
    assert (tmp_path / "a" / "b" / "x.bin").read_bytes() == b"hello"
    assert not (tmp_path / "a" / "b" / "x.bin.tmp").exists()
    fs.rename(target, fs.join(base, "a", "y.bin"))
    assert fs.listdir(fs.join(base, "a")) == ["b", "y.bin"]
    assert fs.isdir(fs.join(base, "a")) and not fs.isdir(fs.join(base, "a", "y.bin"))
    with fs.open_read(fs.join(base, "a", "y.bin")) as f:
        f.seek(1)
        assert f.read() == b"ello"
    fs.remove(fs.join(base, "a", "y.bin"))
    assert fs.listdir(fs.join(base, "a")) == ["b"]


def test_uri_detection_and_errors(tmp_path):
    assert fs.is_uri("s3://bucket/key") and fs.is_uri("file:///tmp") and not fs.is_uri("/tmp/x")
    assert fs.join("s3://bucket/", "/a/", "b") == "s3://bucket/a/b"
    with pytest.raises(FileNotFoundError, match="no file"):
        fs.size(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        fs.listdir(tmp_path / "missing")
    with pytest.raises(ValueError, match="across filesystems"):
        fs.rename(tmp_path / "x", "mock:///y")
