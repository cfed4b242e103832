"""The pipeline driver under bad inputs and injected faults, on one local Ray for the whole module.

* Bad inputs: 64 broken files (and 11 good ones, 7 of them odd but valid) through ingest -> filter ->
  prompts -> tokenize -> shards: every broken file ends in `rejects` with its own reason, every good
  file's excerpt is in a shard exactly once, and the run does not abort.
* Faults: kill -9 of the Ray worker that runs prompts+tokenize; kill -9 of the job driver; a full disk
  while a shard is written; shards truncated, bit-flipped and deleted after they were registered. Each
  run must end with exactly the keys of a clean run, each in one "ok" token shard zipped with one "ok"
  prompt shard of the same group.

Not covered: killing the Ray head. It would take the module's shared cluster down with it, and a fresh
head per test costs more than this suite's time budget; the driver kill covers the "job dies" case.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from faults.fault_corpus import build as build_bad_corpus
from faults.fault_tools import cmdline, descendants, kill_tree, wait_for
from pipeline_fixtures import render_loop
from pipelines.catalogue import Catalogue
from pipelines.run import load_pipeline_config, run

REPO = Path(__file__).resolve().parents[2]
N_GOOD = 4
pytestmark = pytest.mark.faults


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ray_cluster():
    """A fresh local Ray (never a cluster someone else started on this machine), shut down at the end."""
    import ray
    import ray.data

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def good_audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good_audio")
    for i in range(N_GOOD):
        sf.write(folder / f"groove_{i}.wav", render_loop(2.5, seed=30 + i), 44_100)
    return folder


def pipeline_yaml(root: Path, audio: Path, **extra) -> Path:
    """A small pipeline config: tiny codec, 2 prompt variants, one sample per shard, one batch per excerpt."""
    cfg = {
        "name": "faults", "root": str(root),
        "sources": [{"name": "local_folder", "location": str(audio), "tier": "isolated", "licence": "test",
                     "split": "train"}],
        "prompts": {"n_variants": 2, "augment": {"preset": "release"}, "features": {"preset": "release"}},
        "codec": {"weights": "random", "size": "tiny"},
        "shard": {"samples_per_shard": 1, "flac_splits": []},
        "ray": {"prompt_batch_size": 1, "tokenize_batch_size": 1, "filter_batch_size": 16},
        **extra,
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def catalogue_path(root: Path) -> Path:
    return root / "data" / "catalogue.duckdb"


def ok_shards(root: Path, kind: str = "tokens") -> list[dict]:
    with Catalogue(catalogue_path(root), read_only=True) as cat:
        return cat.execute("SELECT t.shard_id, t.path, t.n_samples, t.n_bytes, t.sha256, t.group_id, "
                           "p.path AS prompts, p.sha256 AS prompts_sha256 FROM shards t LEFT JOIN shards p "
                           "ON p.group_id = t.group_id AND p.kind = 'prompts' AND p.status = 'ok' "
                           "WHERE t.status = 'ok' AND t.kind = ? ORDER BY t.path", [kind]).dicts()


def _members(path: str | Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def read_shard(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    """key -> (tokens, feats, meta) of one token shard zipped with its group's prompt shard (beside it)."""
    path = Path(path)
    [prompts] = sorted(path.parent.parent.glob(f"prompts-*/{path.name}"))
    tokens, feats = _members(path), _members(prompts)
    out = {}
    for name, data in tokens.items():
        if name.endswith(".json"):
            key = name[: -len(".json")]
            out[key] = (np.load(io.BytesIO(tokens[f"{key}.tokens.npy"])),
                        np.load(io.BytesIO(feats[f"{key}.feats.npy"])), json.loads(data))
    assert list(out) == [n[: -len(".json")] for n in feats if n.endswith(".json")], "aligned field sets"
    return out


def token_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("tokens-*/shard-*.tar"))


def delivered(root: Path) -> tuple[list[str], dict[str, tuple]]:
    """Every key in every "ok" shard (with repeats: a key twice is a duplicate), and the samples."""
    keys, samples = [], {}
    for row in ok_shards(root):
        got = read_shard(row["path"])
        assert len(got) == row["n_samples"], f"{row['path']}: {len(got)} samples, catalogue says {row['n_samples']}"
        keys += list(got)
        samples.update(got)
    return keys, samples


def assert_complete(root: Path, expected: set[str], tally, shard_root: Path | None = None,
                    whole_folder: bool = True) -> dict[str, tuple]:
    """Exactly the expected keys, each once: in the "ok" shard files, in the catalogue's links and (unless
    bad shards are kept on purpose) in every shard file of the folder; no temp file left."""
    folder = shard_root or root / "data" / "shards"
    keys, samples = delivered(root)
    with Catalogue(catalogue_path(root), read_only=True) as cat:
        links = {kind: [r[0] for r in cat.execute(
            "SELECT se.excerpt_id FROM shard_excerpts se JOIN shards sh ON sh.shard_id = se.shard_id "
            "WHERE sh.status = 'ok' AND sh.kind = ?", [kind]).rows] for kind in ("tokens", "prompts")}
        excerpts = {r[0] for r in cat.execute("SELECT excerpt_id FROM excerpts").rows}
    views = [keys, links["tokens"], links["prompts"]]
    if whole_folder:
        views.append([k for p in token_files(folder) for k in read_shard(p)])
    lost, duplicated = tally.samples(expected, *views)
    assert (lost, duplicated) == (0, 0), f"expected {sorted(expected)}; shard files, links, folder: {views}"
    assert excerpts == expected
    assert not list(folder.rglob("*.tmp")), "a partial shard was left"
    return samples


@pytest.fixture(scope="module")
def clean_run(ray_cluster, good_audio, tmp_path_factory) -> tuple[Path, set[str], dict[str, tuple]]:
    """The reference: an undisturbed run of the good corpus (root, keys, samples)."""
    root = tmp_path_factory.mktemp("clean")
    summary = run(load_pipeline_config(str(pipeline_yaml(root, good_audio)), []))
    keys, samples = delivered(root)
    assert summary["samples"] == len(keys) == len(set(keys)) == N_GOOD
    return root, set(keys), samples


# ------------------------------------------------------------------------------------------ bad inputs


def test_bad_inputs_end_in_rejects_with_their_reason(ray_cluster, tmp_path, tally):
    corpus = build_bad_corpus(tmp_path / "audio")
    tally.inputs(len(corpus.bad), "broken files through the whole pipeline")
    assert len(corpus.bad) >= 50
    cfg = load_pipeline_config(str(pipeline_yaml(tmp_path, corpus.folder)), [])
    summary = run(cfg)  # the run must not abort, whatever is in the folder

    with Catalogue(catalogue_path(tmp_path), read_only=True) as cat:
        by_name = cat.execute("""
            SELECT r.item, r.reason FROM rejects r WHERE r.what = 'raw_file'
            UNION ALL
            SELECT rf.name, r.reason FROM rejects r JOIN stems s ON s.stem_id = r.item
              JOIN raw_files rf ON list_contains(s.raw_ids, rf.raw_id) WHERE r.what = 'stem'
            UNION ALL
            SELECT rf.name, r.reason FROM rejects r JOIN excerpts e ON e.excerpt_id = r.item
              JOIN stems s ON s.stem_id = e.stem_id JOIN raw_files rf ON list_contains(s.raw_ids, rf.raw_id)
              WHERE r.what = 'excerpt'""").rows
        kept = cat.execute("SELECT rf.name, e.excerpt_id FROM excerpts e JOIN stems s ON s.stem_id = e.stem_id "
                           "JOIN raw_files rf ON list_contains(s.raw_ids, rf.raw_id)").rows
    names = [n for n, _ in by_name]
    assert len(names) == len(set(names)), "one reject per bad file, never two"
    got = dict(by_name)
    wrong = {n: (corpus.bad.get(n), got.get(n)) for n in set(got) | set(corpus.bad) if got.get(n) != corpus.bad.get(n)}
    assert not wrong, f"planted -> (expected reason, got): {wrong}"

    # Every good file (odd ones included) has an excerpt, and no bad file has one.
    assert {n for n, _ in kept} == set(corpus.good)
    expected = {k for _, k in kept}
    samples = assert_complete(tmp_path, expected, tally)
    assert summary["samples"] == len(samples) == len(corpus.good)
    for tokens, feats, meta in samples.values():
        assert tokens.shape == (9, 516) and feats.shape == (2, 2, 516) and np.isfinite(feats.astype(np.float32)).all()
        assert 0 < meta["n_frames"] <= 516

    # A second run over the same folder does nothing and adds no row.
    again = run(cfg)
    assert again["written"] == 0 and again["rejects"] == summary["rejects"]


# ------------------------------------------------------------------------------------------- faults


def test_ray_worker_killed_mid_stage(ray_cluster, good_audio, clean_run, tmp_path, tally):
    """kill -9 of the actor process running prompts+tokenize once the first shard is out: Ray restarts
    the actor and retries its batch; the run ends with every sample once."""
    _, keys, clean = clean_run
    shard_dir = tmp_path / "data" / "shards"
    killed: list[tuple[int, str, int]] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            n_done = len(token_files(shard_dir)) if shard_dir.exists() else 0
            if n_done:
                for pid in descendants(os.getpid()):  # only this test's Ray, never another cluster's
                    title = cmdline(pid)
                    if title.startswith("ray::") and "Tokenizer" in title:
                        os.kill(pid, signal.SIGKILL)
                        killed.append((pid, title, n_done))
                        return
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        summary = run(load_pipeline_config(str(pipeline_yaml(tmp_path, good_audio)), []))
    finally:
        stop.set()
        thread.join(timeout=5)
    assert killed, "no Ray worker running the tokenizer was found to kill: the test proved nothing"
    tally.fault(f"kill -9 Ray worker {killed[0][1]!r}")
    assert killed[0][2] < len(keys), "the worker was killed while excerpts were still to do"
    assert summary["written"] == 2 * len(keys) and summary["encoded"] == summary["featurised"] == len(keys)
    samples = assert_complete(tmp_path, keys, tally)
    for k in keys:  # a retried batch gives the same bytes as an undisturbed one
        assert np.array_equal(samples[k][0], clean[k][0]) and np.array_equal(samples[k][1], clean[k][1])


def test_job_driver_killed_then_rerun(ray_cluster, good_audio, clean_run, tmp_path, tally):
    """kill -9 of `python -m pipelines.run` (joined to this module's Ray) once shards appear; a rerun
    keeps what was finished, does the rest, and ends with the clean run's keys, none twice."""
    _, keys, clean = clean_run
    cfg_path = pipeline_yaml(tmp_path, good_audio)
    shard_dir = tmp_path / "data" / "shards"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.run", str(cfg_path)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        appeared = wait_for(lambda: bool(token_files(shard_dir)), timeout=240, interval=0.01, proc=proc)
        alive = proc.poll() is None
        kill_tree(proc)  # SIGKILL: no finally, no atexit, the catalogue is left as the crash left it
    finally:
        kill_tree(proc)
    on_disk = sorted(str(p) for p in shard_dir.rglob("shard-*.tar"))  # token and prompt shards
    assert appeared and alive, "the driver did not reach the shard stage alive:\n" + log.read_text()[-3000:]
    tally.fault("kill -9 of the pipeline job driver")
    assert 0 < len(on_disk) < 2 * len(keys), "killed mid-run: some shards written, some not"
    # Killed right after a rename, the newest file may not be registered yet (an orphan): the rerun must
    # drop it, or its sample would exist twice on disk. Registered shards must be kept as they are.
    registered = ok_shards(tmp_path, "tokens") + ok_shards(tmp_path, "prompts")
    before = {r["path"]: Path(r["path"]).read_bytes() for r in registered}
    assert set(before) <= set(on_disk)  # the rest, if any, are orphans: assert_complete's folder view sees them

    summary = run(load_pipeline_config(str(cfg_path), []))
    assert summary["written"] == 2 * len(keys) - len(before), "only the missing work is redone"
    samples = assert_complete(tmp_path, keys, tally)
    for p, data in before.items():
        assert Path(p).read_bytes() == data, f"{p} was registered before the kill and must not be rewritten"
    for k in keys:
        assert np.array_equal(samples[k][0], clean[k][0]) and np.array_equal(samples[k][1], clean[k][1])


def test_disk_full_while_writing_a_shard(ray_cluster, good_audio, clean_run, tmp_path, tmpfs, tally):
    """Shards on a tmpfs with room for one and a half groups (token and prompt shards and their indexes):
    the run fails with an error naming the shard and the cause, leaves no partial file and no
    unregistered shard; after space is freed a rerun completes with every sample once."""
    _, keys, _ = clean_run
    page = 4096
    rows = ok_shards(clean_run[0], "tokens") + ok_shards(clean_run[0], "prompts")
    pages = max(sum(-(-n // page) for n in (r["n_bytes"], Path(r["path"] + ".idx").stat().st_size))
                for r in rows) * 2  # a group: two shards, each with its index
    mnt = tmpfs(64 * pages * page)
    st = os.statvfs(mnt)
    filler = mnt / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - (pages + pages // 2 + 1) * page))
    cfg = load_pipeline_config(str(pipeline_yaml(tmp_path, good_audio, shard_root=str(mnt / "shards"))), [])

    with pytest.raises(OSError, match="No space left on device") as err:
        run(cfg)
    tally.fault("disk full (tmpfs) while writing a shard")
    assert "cannot write shard" in str(err.value) and "shard-" in str(err.value), str(err.value)
    assert not list(mnt.rglob("*.tmp")), "the partial shard must not stay (nor take the space)"
    finals = sorted(str(p) for p in mnt.rglob("shard-*.tar"))
    registered = ok_shards(tmp_path, "tokens") + ok_shards(tmp_path, "prompts")
    assert finals == sorted(r["path"] for r in registered), "a file under a final name is a registered, whole shard"
    assert 0 < len(finals) < 2 * len(keys)
    for r in ok_shards(tmp_path, "tokens"):
        assert read_shard(r["path"]), r["path"]

    filler.unlink()  # free the space
    summary = run(cfg)
    assert summary["written"] == 2 * len(keys) - len(finals)
    assert_complete(tmp_path, keys, tally, shard_root=mnt / "shards")


def test_corrupted_shards_skipped_by_reader_marked_by_verify_rewritten_by_rerun(
        clean_run, good_audio, caplog, capsys, tally):
    """Three token shards damaged after registration (truncated, bytes flipped, deleted): the trainer's
    reader skips them with a warning, `pipelines.verify` marks them bad and exits 1, and a pipeline rerun
    writes those token shards again at their paths (same bytes; their prompt shards are kept, so nothing
    is featurised again), after which verify exits 0."""
    from pipelines.verify import main as verify_main
    from tria.data import ReaderConfig, ShardDataset, ShardLoader, ShardSpec

    root, keys, clean = clean_run
    rows = ok_shards(root)
    assert len(rows) == N_GOOD
    truncated, flipped, deleted = rows[0], rows[1], rows[-1]
    data = Path(truncated["path"]).read_bytes()
    Path(truncated["path"]).write_bytes(data[: len(data) // 2])
    with tarfile.open(flipped["path"]) as tar:  # flip bits inside the tokens payload, past the npy header
        member = next(m for m in tar.getmembers() if m.name.endswith(".tokens.npy"))
    data = bytearray(Path(flipped["path"]).read_bytes())
    at = member.offset_data + 256
    data[at:at + 64] = bytes(b ^ 0x55 for b in data[at:at + 64])
    Path(flipped["path"]).write_bytes(bytes(data))
    Path(deleted["path"]).unlink()
    for what in ("truncated", "bit-flipped", "deleted"):
        tally.fault(f"registered shard {what}")
    damaged = {r["path"] for r in (truncated, flipped, deleted)}
    lost_keys = {k for r in (truncated, flipped, deleted) for k in clean_keys_of(root, r["shard_id"])}

    specs = [ShardSpec(r["path"], int(r["n_samples"]), r["sha256"], prompts=r["prompts"],
                       prompts_sha256=r["prompts_sha256"]) for r in rows]
    for verify in (False, True):
        caplog.clear()
        reader = ShardDataset(specs, ReaderConfig(batch_size=1, shuffle=False, drop_last=False,
                                                  verify_checksums=verify))
        with caplog.at_level(logging.WARNING, logger="tria.data"):
            seen = [k for batch in ShardLoader(reader) for k in batch["keys"]]
        warned = {r.getMessage().split()[3].rstrip(":") for r in caplog.records
                  if "skipping unreadable" in r.getMessage()}
        # Without checksums the flipped shard still parses: its tokens are silently wrong, which is why the
        # reader's verify_checksums and `pipelines.verify` exist. With checksums all three are skipped.
        expect_skipped = damaged if verify else damaged - {flipped["path"]}
        assert warned == expect_skipped, (verify, warned)
        assert sorted(seen) == sorted(keys - {k for r in rows if r["path"] in expect_skipped
                                              for k in clean_keys_of(root, r["shard_id"])})
    silently_wrong = read_shard(flipped["path"])
    assert all(not np.array_equal(v[0], clean[k][0]) for k, v in silently_wrong.items())

    capsys.readouterr()
    assert verify_main(["--catalogue", str(catalogue_path(root)), "--dry-run"]) == 1  # reports, marks nothing
    assert "DAMAGED: " in capsys.readouterr().out and {r["path"] for r in ok_shards(root)} == {r["path"] for r in rows}
    prompts_before = {r["path"]: Path(r["path"]).read_bytes() for r in ok_shards(root, "prompts")}
    assert verify_main(["--catalogue", str(catalogue_path(root))]) == 1
    out = capsys.readouterr().out
    for row, problem in ((truncated, "size_mismatch"), (flipped, "checksum_mismatch"), (deleted, "missing")):
        assert f"MARKED BAD: {row['path']}: {problem}" in out, out
    assert "verified 8 shards: 5 intact, 3 marked bad" in out, out
    with Catalogue(catalogue_path(root), read_only=True) as cat:
        bad = {r[0] for r in cat.execute("SELECT path FROM shards WHERE status = 'bad'").rows}
        verify_rejects = cat.execute("SELECT count(*) FROM rejects WHERE stage = 'verify'").rows[0][0]
    assert bad == damaged and verify_rejects == 3

    summary = run(load_pipeline_config(str(pipeline_yaml(root, good_audio)), []))
    assert summary["written"] == summary["encoded"] == len(lost_keys) == 3 and summary["featurised"] == 0
    samples = assert_complete(root, keys, tally)  # rewritten in place: nothing stale stays on disk
    assert {r["path"]: Path(r["path"]).read_bytes() for r in ok_shards(root, "prompts")} == prompts_before
    for k in keys:
        assert np.array_equal(samples[k][0], clean[k][0]) and np.array_equal(samples[k][1], clean[k][1]), k
    cli = subprocess.run([sys.executable, "-m", "pipelines.verify", "--catalogue", str(catalogue_path(root))],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert cli.returncode == 0, cli.stdout + cli.stderr
    # Each damaged path holds a new, whole shard of its group: "ok" again, with only its sample linked
    # (stale links would make an excerpt look held twice).
    assert "verified 8 shards: 8 intact, 0 marked bad" in cli.stdout and "already" not in cli.stdout, cli.stdout
    assert {truncated["path"], flipped["path"], deleted["path"]} <= {r["path"] for r in ok_shards(root)}


def clean_keys_of(root: Path, shard_id: str) -> set[str]:
    with Catalogue(catalogue_path(root), read_only=True) as cat:
        return {r[0] for r in cat.execute("SELECT excerpt_id FROM shard_excerpts WHERE shard_id = ?", [shard_id]).rows}
