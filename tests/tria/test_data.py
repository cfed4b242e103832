"""Tests of the streaming shard reader: split, elastic order, resume, corruption, collate, memory."""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tria.data import (
    TIERS,
    ReaderConfig,
    ShardDataset,
    ShardLoader,
    ShardSpec,
    collate,
    scan_shards,
)

N_VARIANTS, N_BANDS, T = 3, 2, 6


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, keys: list[str], tier: str = "isolated", frames: int = T) -> Path:
    """A shard in the contract's layout; tokens[0, 0] holds the sample's number, feats[v] == v / 10."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key in keys:
            tokens = np.full((9, frames), int(key.rsplit("_", 1)[1]), dtype=np.int16)
            feats = np.stack([np.full((N_BANDS, frames), v / 10) for v in range(N_VARIANTS)]).astype(
                np.float16
            )
            meta = {"key": key, "tier": tier, "n_frames": frames - 1, "source": "test"}
            _add(tar, f"{key}.tokens.npy", _npy(tokens))
            _add(tar, f"{key}.feats.npy", _npy(feats))
            _add(tar, f"{key}.json", json.dumps(meta).encode())
            _add(tar, f"{key}.flac", b"not really flac, never read")
    return path


def write_fields(root: Path, i: int, keys: list[str], tier: str = "isolated", frames: int = T) -> ShardSpec:
    """The same samples as ``write_shard``, as the pipeline writes them: a token tar and a prompt tar of one
    group (same keys, same order), each with its index."""
    from pipelines.stages.shard import write_shard

    tok, prm = root / "tokens-c" / f"shard-{i:06d}.tar", root / "prompts-f-a" / f"shard-{i:06d}.tar"
    tokens = [{"key": k, "tokens": np.full((9, frames), int(k.rsplit("_", 1)[1]), dtype=np.int16),
               "flac": b"not really flac, never read", "meta": {"key": k, "tier": tier, "n_frames": frames - 1}}
              for k in keys]
    feats = np.stack([np.full((N_BANDS, frames), v / 10) for v in range(N_VARIANTS)]).astype(np.float16)
    prompts = [{"key": k, "feats": feats, "meta": {"key": k}} for k in keys]
    _, sha = write_shard(str(tok), "tokens", tokens)
    _, prompts_sha = write_shard(str(prm), "prompts", prompts)
    return ShardSpec(str(tok), len(keys), sha, prompts=str(prm), prompts_sha256=prompts_sha)


def make_shards(root: Path, sizes: list[int], prefix: str = "s", tier: str = "isolated",
                layout: str = "tar") -> list[ShardSpec]:
    """``layout``: "tar" (tokens and features in one tar, no index) or "fields" (the pipeline's field sets)."""
    paths, specs, n = [], [], 0
    for i, size in enumerate(sizes):
        keys = [f"{prefix}{i}_{n + j}" for j in range(size)]
        n += size
        if layout == "fields":
            specs.append(write_fields(root, i, keys, tier))
        else:
            paths.append(str(write_shard(root / f"shard-{i:06d}.tar", keys, tier)))
    return specs if layout == "fields" else scan_shards(paths, checksum=True)


SIZES = [7, 10, 13, 5, 10, 9]  # 54 samples, uneven on purpose


@pytest.fixture(params=["tar", "fields"])
def shards(tmp_path: Path, request) -> list[ShardSpec]:
    """Every reader test runs on one-tar shards (header walk) and on zipped field sets (index)."""
    return make_shards(tmp_path / "train", SIZES, layout=request.param)


def all_keys(specs: list[ShardSpec]) -> list[str]:
    keys = []
    for spec in specs:
        with tarfile.open(spec.url) as tar:
            keys += sorted(
                {m.name.split(".")[0] for m in tar.getmembers()}, key=lambda k: int(k.split("_")[1])
            )
    return keys


def global_steps(specs, world: int, batch: int, workers: int = 0, **cfg) -> list[list[str]]:
    """Runs every rank of a simulated world and joins the rank batches of each step, in rank order."""
    config = ReaderConfig(
        batch_size=batch, **{"shuffle_buffer": 16, "interleave": 2, "drop_last": False, **cfg}
    )
    per_rank = [
        [b["keys"] for b in ShardLoader(ShardDataset(specs, config, r, world), num_workers=workers)]
        for r in range(world)
    ]
    n_steps = max(len(p) for p in per_rank)
    return [sum((p[s] for p in per_rank if s < len(p)), []) for s in range(n_steps)]


class TestSplit:
    def test_scan_counts_samples(self, shards):
        assert [s.n_samples for s in shards] == SIZES
        assert all(s.sha256 and len(s.sha256) == 64 for s in shards)

    def test_every_sample_once_over_two_ranks_two_workers(self, shards):
        steps = global_steps(shards, world=2, batch=3, workers=2)
        seen = Counter(k for step in steps for k in step)
        assert sorted(seen) == sorted(all_keys(shards))
        assert set(seen.values()) == {1}
        assert len(steps) == math.ceil(54 / 6)

    def test_same_global_batches_for_any_world_and_workers(self, shards):
        reference = global_steps(shards, world=1, batch=6)
        assert global_steps(shards, world=2, batch=3, workers=2) == reference
        assert global_steps(shards, world=3, batch=2, workers=1) == reference
        assert sorted(sum(reference, [])) == sorted(all_keys(shards))

    def test_drop_last_drops_only_the_partial_global_batch(self, shards):
        steps = global_steps(shards, world=2, batch=4, drop_last=True)
        assert len(steps) == 54 // 8 and all(len(s) == 8 for s in steps)
        assert len(set(sum(steps, []))) == 48


class TestOrder:
    def test_epochs_reshuffle_deterministically(self, shards):
        cfg = ReaderConfig(batch_size=4, shuffle_buffer=16, interleave=2, drop_last=False)

        def epoch_keys(epoch: int, seed: int = 0) -> list[str]:
            ds = ShardDataset(shards, ReaderConfig(**{**cfg.__dict__, "seed": seed}))
            ds.set_epoch(epoch)
            return sum((b["keys"] for b in ds), [])

        e0, e1 = epoch_keys(0), epoch_keys(1)
        assert e0 == epoch_keys(0) and e1 == epoch_keys(1)
        assert e0 != e1 and sorted(e0) == sorted(e1)
        assert epoch_keys(0, seed=1) != e0

    def test_without_shuffle_shards_are_read_in_the_given_order(self, shards):
        keys = sum(global_steps(shards, world=1, batch=4, shuffle=False, interleave=1), [])
        assert keys == all_keys(shards)  # no shuffle: the given shard order, front to back

    def test_iterating_again_goes_to_next_epoch(self, shards):
        ds = ShardDataset(shards, ReaderConfig(batch_size=5, shuffle_buffer=16, drop_last=False))
        first = [b["keys"] for b in ShardLoader(ds)]
        assert ds.epoch == 1 and ds.position == 0
        second = [b["keys"] for b in ShardLoader(ds)]
        assert first != second and ds.epoch == 2


class TestResume:
    @pytest.mark.parametrize("new_world,new_batch", [(2, 3), (1, 6)])
    def test_resume_mid_epoch_gives_exactly_the_remaining_steps(self, shards, new_world, new_batch):
        cfg = dict(shuffle_buffer=16, interleave=2, drop_last=False)
        full = global_steps(shards, world=2, batch=3, workers=2, **cfg)
        loaders = [
            ShardLoader(ShardDataset(shards, ReaderConfig(batch_size=3, **cfg), r, 2), num_workers=2)
            for r in range(2)
        ]
        done = []
        for step, batches in enumerate(
            zip(*loaders, strict=False)
        ):  # the ranks step in lockstep, as under DDP
            done.append(sum((b["keys"] for b in batches), []))
            if step == 3:
                break
        state = loaders[0].state_dict()
        assert state["position"] == 4 * 6 and state["epoch"] == 0
        assert loaders[1].state_dict() == state
        rest = []
        for r in range(new_world):
            ds = ShardDataset(shards, ReaderConfig(batch_size=new_batch, **cfg), r, new_world)
            ds.load_state_dict(state)
            rest.append([b["keys"] for b in ShardLoader(ds, num_workers=2)])
        rest_steps = [sum((p[s] for p in rest if s < len(p)), []) for s in range(max(map(len, rest)))]
        assert done == full[:4]
        assert rest_steps == full[4:]

    def test_resume_with_another_global_batch_continues_the_same_order(self, shards):
        cfg = ReaderConfig(batch_size=6, shuffle_buffer=16, interleave=2, drop_last=False)
        full = [b["keys"] for b in ShardDataset(shards, cfg)]
        ds = ShardDataset(shards, cfg)
        done = [b["keys"] for _, b in zip(range(3), ds, strict=False)]
        assert done == full[:3] and ds.state_dict()["position"] == 18
        smaller = ShardDataset(shards, ReaderConfig(**{**cfg.__dict__, "batch_size": 4}))
        smaller.load_state_dict(ds.state_dict())
        rest = [b["keys"] for b in smaller]
        assert all(len(r) == 4 for r in rest[:-1]) and len(rest) == math.ceil(36 / 4)
        # Same positions of the global order: batches regroup, the multiset of what is left does not.
        assert sorted(sum(rest, [])) == sorted(sum(full[3:], []))
        assert set(sum(rest[:3], [])) == set(sum(full[3:5], []))  # positions 18..29 in both

    def test_position_counts_delivered_batches_not_prefetched_ones(self, shards):
        ds = ShardDataset(shards, ReaderConfig(batch_size=4, shuffle_buffer=16, drop_last=False))
        loader = ShardLoader(ds, num_workers=2, prefetch_factor=4)
        it = iter(loader)
        first = next(it)
        assert first["position"] == 4 and loader.state_dict()["position"] == 4
        next(it)
        assert loader.state_dict()["position"] == 8
        del it
        again = next(iter(ShardLoader(ds, num_workers=2)))  # a new iterator continues after step 2
        assert again["position"] == 12

    def test_state_from_other_shard_list_is_refused(self, shards):
        ds = ShardDataset(shards, ReaderConfig(batch_size=4))
        other = ShardDataset(shards[:-1], ReaderConfig(batch_size=4))
        with pytest.raises(ValueError, match="fingerprint"):
            other.load_state_dict(ds.state_dict())
        with pytest.raises(ValueError, match="seed"):
            ShardDataset(shards, ReaderConfig(batch_size=4, seed=3)).load_state_dict(ds.state_dict())
        other.load_state_dict({**ds.state_dict(), "position": 8}, strict=False)
        assert other.position == 8


def epochs(specs, world: int, batch: int, workers: int, n_epochs: int, **cfg):
    """Global steps of ``n_epochs`` consecutive epochs, each rank through one ShardLoader; and the loaders."""
    config = ReaderConfig(batch_size=batch, **{"shuffle_buffer": 16, "interleave": 2, "drop_last": False, **cfg})
    loaders = [ShardLoader(ShardDataset(specs, config, r, world), num_workers=workers) for r in range(world)]
    out = []
    for _ in range(n_epochs):
        per_rank = [[b["keys"] for b in loader] for loader in loaders]
        out.append([sum((p[s] for p in per_rank if s < len(p)), []) for s in range(max(map(len, per_rank)))])
    return out, loaders


def worker_pids(loader: ShardLoader) -> list[int]:
    return [w.pid for w in loader._loader._iterator._workers if w.is_alive()]


class TestPersistentWorkers:
    def test_workers_persist_across_epochs_and_keep_the_elastic_order(self, shards):
        reference, _ = epochs(shards, world=1, batch=6, workers=0, n_epochs=3)
        assert len({tuple(map(tuple, e)) for e in reference}) == 3  # three different epochs
        # 54 samples, G = 6: 9 steps per epoch, so with 2 workers epoch 1 starts on worker 1
        loader = ShardLoader(ShardDataset(shards, ReaderConfig(batch_size=3, shuffle_buffer=16, interleave=2,
                                                               drop_last=False), 0, 2), num_workers=2)
        pids = []
        for _ in range(3):
            list(loader)
            pids.append(worker_pids(loader))
        assert len(pids[0]) == 2 and pids[0] == pids[1] == pids[2], pids
        loader.close()
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids[0]), "close() stops the workers"
        got, loaders = epochs(shards, world=2, batch=3, workers=2, n_epochs=3)
        assert got == reference
        got3, more = epochs(shards, world=3, batch=2, workers=2, n_epochs=2, drop_last=True)
        assert got3 == [e[:9] for e in epochs(shards, world=1, batch=6, workers=0, n_epochs=2, drop_last=True)[0]]
        for x in loaders + more:
            x.close()

    def test_break_and_iterate_again_continues_after_the_last_delivered_batch(self, shards):
        reference, _ = epochs(shards, world=1, batch=4, workers=0, n_epochs=2)
        ds = ShardDataset(shards, ReaderConfig(batch_size=4, shuffle_buffer=16, interleave=2, drop_last=False))
        loader = ShardLoader(ds, num_workers=2, prefetch_factor=3)
        got = []
        for i, b in enumerate(loader):
            got.append(b["keys"])
            if i == 4:
                break
        got += [b["keys"] for b in loader]  # the rest of epoch 0 from the same (still running) workers
        assert got == reference[0] and ds.epoch == 1
        assert [b["keys"] for b in loader] == reference[1]
        loader.close()

    def test_a_loaded_position_reaches_the_persistent_workers(self, shards):
        reference, _ = epochs(shards, world=1, batch=4, workers=0, n_epochs=2)
        ds = ShardDataset(shards, ReaderConfig(batch_size=4, shuffle_buffer=16, interleave=2, drop_last=False))
        loader = ShardLoader(ds, num_workers=2)
        for i, _ in enumerate(loader):
            if i == 6:
                break
        pids = worker_pids(loader)
        state = {**ds.state_dict(), "epoch": 1, "position": 8}  # jump: step 2 of epoch 1
        loader.load_state_dict(state)
        assert [b["keys"] for b in loader] == reference[1][2:]
        ds.set_epoch(0)
        assert [b["keys"] for b in loader] == reference[0]
        assert worker_pids(loader) == pids, "the same processes, restarted at the new position"
        loader.close()

    def test_default_queue_covers_a_window_read(self, shards):
        # a worker must read a whole window before the window's first step: its queue lasts that long
        small = ShardDataset(shards, ReaderConfig(batch_size=2, shuffle_buffer=16), 0, 2)  # 4 steps per window
        assert ShardLoader(small, num_workers=2).prefetch_factor == 3
        big = ShardDataset(shards, ReaderConfig(batch_size=24, shuffle_buffer=2048))  # 86 steps per window
        assert ShardLoader(big, num_workers=2).prefetch_factor == 16  # capped: batches queue in /dev/shm
        assert ShardLoader(big, num_workers=2, prefetch_factor=5).prefetch_factor == 5
        assert ShardLoader(big).prefetch_factor is None

    def test_device_path_delivers_the_same_batches(self, shards):
        cfg = ReaderConfig(batch_size=4, shuffle_buffer=16, interleave=2, drop_last=False)
        plain = list(ShardLoader(ShardDataset(shards, cfg)))
        moved = list(ShardLoader(ShardDataset(shards, cfg), num_workers=1, device="cpu"))
        assert [b["keys"] for b in moved] == [b["keys"] for b in plain]
        for a, b in zip(plain, moved, strict=True):
            assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["feats"], b["feats"])
            assert b["tokens"].device.type == "cpu"

    @pytest.mark.gpu
    def test_cuda_prefetch_puts_tokens_and_feats_on_the_device(self, shards):
        cfg = ReaderConfig(batch_size=4, shuffle_buffer=16, interleave=2, drop_last=False)
        plain = list(ShardLoader(ShardDataset(shards, cfg)))
        loader = ShardLoader(ShardDataset(shards, cfg), num_workers=2, device="cuda")
        for a, b in zip(plain, loader, strict=True):
            assert b["tokens"].is_cuda and b["feats"].is_cuda and not b["lengths"].is_cuda
            assert torch.equal(a["tokens"], b["tokens"].cpu()) and torch.equal(a["feats"], b["feats"].cpu())
        loader.close()


@pytest.mark.faults
class TestCorruption:
    @pytest.mark.parametrize("damage", ["truncate", "flip_header"])
    def test_unreadable_shard_is_skipped_with_warning(self, shards, caplog, damage):
        bad = Path(shards[2].url)
        data = bytearray(bad.read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2 + 100]
        else:  # scramble the tar header of one member in the middle: tarfile then sees an end of archive
            with tarfile.open(bad) as tar:
                offset = next(m.offset for m in tar.getmembers() if m.name.startswith("s2_22."))
            data[offset : offset + 512] = bytes(b ^ 0x5A for b in data[offset : offset + 512])
            Path(f"{bad}.idx").unlink(missing_ok=True)  # an index would not need the header: walk them
        bad.write_bytes(bytes(data))
        with caplog.at_level(logging.WARNING, logger="tria.data"):
            keys = sum(global_steps(shards, world=1, batch=4), [])
        bad_keys = {f"s2_{i}" for i in range(17, 30)}
        good = set(all_keys(shards[:2] + shards[3:]))
        assert good <= set(keys) and len(keys) == len(set(keys))
        assert set(keys) - good < bad_keys  # some of the bad shard's samples are lost, never invented
        assert any(str(bad) in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)

    def test_checksum_mismatch_skips_the_whole_shard(self, shards, caplog):
        bad = Path(shards[1].url)
        with tarfile.open(bad) as tar:
            offset = next(m.offset_data for m in tar.getmembers() if m.name.endswith("tokens.npy"))
        data = bytearray(bad.read_bytes())
        data[offset + 200] ^= 0x01  # one bit in a token payload: tar and npy still parse, only sha256 sees it
        bad.write_bytes(bytes(data))
        with caplog.at_level(logging.WARNING, logger="tria.data"):
            keys = sum(global_steps(shards, world=1, batch=4, verify_checksums=True), [])
        assert sorted(keys) == sorted(all_keys(shards[:1] + shards[2:]))
        assert any(str(bad) in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)

    def test_missing_file_is_skipped(self, shards, caplog):
        Path(shards[0].url).unlink()
        with caplog.at_level(logging.WARNING, logger="tria.data"):
            keys = sum(global_steps(shards, world=1, batch=4), [])
        assert sorted(keys) == sorted(all_keys(shards[1:]))
        assert any(shards[0].url in r.getMessage() for r in caplog.records)


class TestBatches:
    def test_collate_pads_to_longest(self):
        def sample(key, n, frames, tier):
            return {
                "key": key,
                "tokens": np.arange(9 * n, dtype=np.int16).reshape(9, n) % 1024,
                "feats": np.ones((N_BANDS, n), np.float16),
                "n_frames": frames,
                "tier": tier,
            }

        batch = collate([sample("a", 5, 4, "isolated"), sample("b", 8, 8, "synthetic")])
        assert batch["tokens"].shape == (2, 9, 8) and batch["tokens"].dtype == torch.long
        assert batch["feats"].shape == (2, N_BANDS, 8) and batch["feats"].dtype == torch.float32
        assert batch["lengths"].tolist() == [4, 8] and batch["lengths"].dtype == torch.long
        assert batch["tier"] == ["isolated", "synthetic"] and batch["tier_id"].tolist() == [0, 2]
        assert batch["keys"] == ["a", "b"]
        assert batch["tokens"][0, :, 5:].abs().sum() == 0 and batch["feats"][0, :, 5:].sum() == 0
        assert batch["tokens"][0, 1, 0] == 5 and batch["feats"][1].sum() == N_BANDS * 8

    def test_collate_rejects_bad_input(self):
        with pytest.raises(ValueError, match="at least one"):
            collate([])
        bad = {
            "key": "x",
            "tokens": np.zeros((9, 4), np.int16),
            "feats": np.zeros((2, 4)),
            "n_frames": 4,
            "tier": "studio",
        }
        with pytest.raises(ValueError, match="unknown tier"):
            collate([bad])

    def test_reader_batches_and_feature_variant(self, shards):
        def by_key(epoch):
            ds = ShardDataset(shards, ReaderConfig(batch_size=4, shuffle_buffer=16, drop_last=False))
            ds.set_epoch(epoch)
            out = {}
            for b in ds:
                assert b["tokens"].shape[1:] == (9, T) and b["feats"].shape[1:] == (N_BANDS, T)
                assert b["lengths"].tolist() == [T - 1] * len(b["keys"])
                assert b["tier_id"].tolist() == [TIERS.index("isolated")] * len(b["keys"])
                for i, key in enumerate(b["keys"]):
                    assert b["tokens"][i, 0, 0] == int(key.split("_")[1])
                    out[key] = round(float(b["feats"][i, 0, 0]) * 10)
            return out

        e0 = by_key(0)
        assert by_key(0) == e0 and set(e0.values()) == set(range(N_VARIANTS))
        assert by_key(1) != e0


class TestMemoryAndMixing:
    @pytest.mark.parametrize("n_shards", [5, 40])
    def test_held_samples_bounded_whatever_the_number_of_shards(self, tmp_path, n_shards):
        specs = make_shards(tmp_path, [10] * n_shards)
        cfg = ReaderConfig(batch_size=4, shuffle_buffer=16, interleave=4, drop_last=False)
        ds = ShardDataset(specs, cfg)
        n = sum(len(b["keys"]) for b in ds)
        assert n == 10 * n_shards
        bound = cfg.batch_size * math.ceil((math.ceil(cfg.shuffle_buffer / 4) + 1) / 1)
        assert 0 < ds.peak_held <= bound == 20

    def test_one_worker_of_a_rank_holds_its_share_of_a_window(self, tmp_path, monkeypatch):
        import types

        import tria.data

        specs = make_shards(tmp_path, [10] * 32)
        cfg = ReaderConfig(batch_size=2, shuffle_buffer=32, interleave=4, drop_last=False)
        ds = ShardDataset(specs, cfg, rank=1, world_size=2)
        monkeypatch.setattr(tria.data, "get_worker_info", lambda: types.SimpleNamespace(id=1, num_workers=2))
        n = sum(len(b["keys"]) for b in ds)  # worker 1 of rank 1 of a 2 x 2 world
        assert n == 320 // 4
        G, W = 4, 2
        bound = cfg.batch_size * math.ceil((math.ceil(cfg.shuffle_buffer / G) + 1) / W)
        assert 0 < ds.peak_held <= bound == 10

    def test_weighted_streams_get_their_quota(self, tmp_path):
        a = [
            ShardSpec(s.url, s.n_samples, stream="musdb", weight=3.0)
            for s in make_shards(tmp_path / "a", [10, 10, 10], "a")
        ]
        b = [
            ShardSpec(s.url, s.n_samples, stream="fsl", weight=1.0)
            for s in make_shards(tmp_path / "b", [5], "b")
        ]
        cfg = ReaderConfig(batch_size=5, shuffle_buffer=16, epoch_size=40, drop_last=False)
        keys = sum((bt["keys"] for bt in ShardDataset(a + b, cfg)), [])
        counts = Counter(k[0] for k in keys)
        assert counts == {"a": 30, "b": 10}
        assert set(Counter(k for k in keys if k[0] == "b").values()) == {2}  # 5 samples, each twice
        with pytest.raises(ValueError, match="no weight"):
            ShardDataset(a + [ShardSpec(b[0].url, 5)], cfg)


class TestFieldSets:
    def test_index_and_header_walk_read_the_same(self, tmp_path):
        specs = make_shards(tmp_path, SIZES, layout="fields")
        cfg = ReaderConfig(batch_size=4, shuffle_buffer=16, drop_last=False)
        fast = [(b["keys"], b["tokens"], b["feats"], b["lengths"]) for b in ShardDataset(specs, cfg)]
        for idx in tmp_path.rglob("*.idx"):
            idx.unlink()
        slow = [(b["keys"], b["tokens"], b["feats"], b["lengths"]) for b in ShardDataset(specs, cfg)]
        assert len(fast) == len(slow) == math.ceil(54 / 4)
        for a, b in zip(fast, slow):
            assert a[0] == b[0] and all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))

    def test_stale_index_is_not_trusted(self, tmp_path):
        stale = Path(make_shards(tmp_path, [6], layout="fields")[0].url + ".idx").read_text()
        # the same path rewritten (same size: tar pads members to 512 bytes), and registered again
        spec = write_fields(tmp_path, 0, [f"s0_{i}" for i in range(6)], frames=T + 3)
        Path(spec.url + ".idx").write_text(stale)  # but beside it an index of the old file
        cfg = ReaderConfig(batch_size=6, shuffle=False, drop_last=False)
        batch = next(iter(ShardDataset([spec], cfg)))
        assert batch["tokens"].shape[-1] == T + 3 and batch["lengths"].tolist() == [T + 2] * 6

    def test_misaligned_prompt_shard_is_skipped_with_warning(self, tmp_path, caplog):
        good, bad = make_shards(tmp_path / "a", [4, 4], layout="fields")
        other = write_fields(tmp_path / "b", 0, ["s1_5", "s1_4", "s1_6", "s1_7"])  # same keys, another order
        specs = [good, ShardSpec(bad.url, 4, prompts=other.prompts)]
        with caplog.at_level(logging.WARNING, logger="tria.data"):
            keys = sum(global_steps(specs, world=1, batch=2, shuffle=False, interleave=1), [])
        assert keys == ["s0_0", "s0_1", "s0_2", "s0_3"]
        assert any("not aligned" in r.getMessage() for r in caplog.records)


class TestInputs:
    def test_pyarrow_uri_reads_like_a_path(self, shards):
        uris = [ShardSpec(f"file://{s.url}", s.n_samples, prompts=s.prompts and f"file://{s.prompts}") for s in shards]
        cfg = ReaderConfig(batch_size=4, shuffle_buffer=16, drop_last=False)
        assert [b["keys"] for b in ShardDataset(uris, cfg)] == [b["keys"] for b in ShardDataset(shards, cfg)]

    def test_bad_arguments(self, shards):
        cfg = ReaderConfig(batch_size=4)
        with pytest.raises(ValueError, match="rank"):
            ShardDataset(shards, cfg, rank=2, world_size=2)
        with pytest.raises(ValueError, match="empty"):
            ShardDataset([], cfg)
        with pytest.raises(ValueError, match="global batch"):
            ShardDataset(shards, ReaderConfig(batch_size=40), world_size=2)
        with pytest.raises(ValueError, match="n_samples"):
            ShardSpec("x.tar", -1)
        with pytest.raises(ValueError, match="batch_size"):
            ReaderConfig(batch_size=0)
        with pytest.raises(ValueError, match="url"):
            ShardSpec.from_dict({"n_samples": 3})
