"""Stateful property test: random sequences of every pool operation against an in-memory model.

The model keeps each volume's bytes in a bytearray, its lineage by name, and the snapshot
groups (group snapshots, group deletion, and shrinking are among the operations). Every read is
compared; after every step the names, kinds, sizes and parents must match. "crash" closes the
pool without committing and reopens it: blocks written since the last flush may then read as
their durable value or as any value written since (a volatile write cache), every other block
exactly as the model says; the model then adopts what the pool reads. A final step checks the
pool offline (``check``) and requires it clean.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sbstore.store import Pool
from sbstore.store.check import check_pool

CLUSTER = 4096  # small clusters: a 6 MiB volume spans two map leaves (1024 clusters each)
POOL_SIZE = 192 << 20
MAX_VOL_BLOCKS = 12288  # 6 MiB at 512 B


@dataclass
class MVol:
    snap: bool
    bs: int
    data: bytearray
    parent: str | None = None
    # block -> versions written since the last flush (for the crash rule)
    pending: dict[int, set[bytes]] = field(default_factory=dict)

    @property
    def nblocks(self) -> int:
        return len(self.data) // self.bs


def _tmpdir() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="sbstore-prop-", dir=base)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = _tmpdir()
        self.path = os.path.join(self.dir, "pool.img")
        self.loop = asyncio.new_event_loop()
        self.pool = Pool.create(self.path, POOL_SIZE, cluster_size=CLUSTER)
        self.pool.commit_interval = 1e9  # commits only when a step asks for one
        self.model: dict[str, MVol] = {}
        self.counter = 0
        self.names = 0
        self.recent: list[tuple[str, int, int]] = []
        self.groups: dict[str, list[str]] = {}  # snapshot group -> its members' names

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            if self.pool is not None:
                self.run(self.pool.aclose())
                report = check_pool(self.path)
                assert report.clean, report.problems
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- helpers ------------------------------------------------------------------------------

    def new_name(self) -> str:
        self.names += 1
        return f"v{self.names}"

    def writable(self) -> list[str]:
        return sorted(n for n, v in self.model.items() if not v.snap)

    def snapshots(self) -> list[str]:
        return sorted(n for n, v in self.model.items() if v.snap)

    def pattern(self, bs: int, nblocks: int) -> bytes:
        self.counter += 1
        return b"".join(struct.pack("<QQ", self.counter, i) * (bs // 16) for i in range(nblocks))

    def change(self, mv: MVol, lba: int, payload: bytes, durable: bool) -> None:
        """Apply a write to the model; unless ``durable``, remember the block's possible values
        after a crash (its value at the last flush, and each value written since)."""
        bs = mv.bs
        if durable:
            mv.data[lba * bs:lba * bs + len(payload)] = payload
            return
        for i in range(len(payload) // bs):
            b = lba + i
            old = bytes(mv.data[b * bs:(b + 1) * bs])
            mv.pending.setdefault(b, {old}).add(payload[i * bs:(i + 1) * bs])
        mv.data[lba * bs:lba * bs + len(payload)] = payload

    def flushed(self) -> None:
        for mv in self.model.values():
            mv.pending.clear()

    def draw_range(self, data: st.DataObject, mv: MVol, max_blocks: int = 64) -> tuple[int, int]:
        """Mostly short ranges near the start (so writes, snapshots and reads overlap), sometimes
        anywhere (so the second map leaf is used too)."""
        top = mv.nblocks - 1
        lba = data.draw(st.integers(0, min(top, 16384 // mv.bs)) | st.integers(0, top),
                        label="lba")
        room = min(max_blocks, mv.nblocks - lba)
        n = data.draw(st.integers(1, min(room, 4)) | st.integers(1, min(room, 16))
                      | st.integers(1, room), label="nblocks")
        return lba, n

    # --- rules ----------------------------------------------------------------------------------

    @precondition(lambda self: len(self.model) < 8)
    @rule(blocks=st.integers(1, 64) | st.integers(1, MAX_VOL_BLOCKS // 8),
          bs=st.sampled_from([512, 4096]))
    def create(self, blocks: int, bs: int) -> None:
        name = self.new_name()
        size = blocks * 8 * 512  # a multiple of 4 KiB, so both block sizes fit
        self.run(self.pool.create_volume(name, size, block_size=bs))
        self.model[name] = MVol(snap=False, bs=bs, data=bytearray(size))
        self.flushed()

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def io(self, data: st.DataObject) -> None:
        """Up to twelve I/Os, mostly writes, to volumes drawn anew each time."""
        kinds = st.sampled_from(["write", "write", "rewrite", "rewrite", "write_fua", "read",
                                 "write_zeroes", "deallocate"])
        for _ in range(data.draw(st.integers(1, 12), label="ios")):
            kind = data.draw(kinds, label="io")
            if kind == "read":
                self.do_read(data)
            elif self.writable():
                getattr(self, "do_" + kind)(data)

    def do_write(self, data: st.DataObject, fua: bool = False) -> None:
        name = data.draw(st.sampled_from(self.writable()), label="volume")
        mv = self.model[name]
        lba, n = self.draw_range(data, mv)
        self.recent.append((name, lba, n))
        del self.recent[:-8]
        self.write_range(name, lba, n, fua)

    def do_rewrite(self, data: st.DataObject) -> None:
        """Write again inside a range written recently (after a snapshot: copy-on-write, then
        in place; after a crash: the first write may be gone)."""
        recent = [r for r in self.recent if r[0] in self.model and not self.model[r[0]].snap
                  and r[1] < self.model[r[0]].nblocks]
        if not recent:
            self.do_write(data)
            return
        name, lba, n = data.draw(st.sampled_from(recent), label="recent")
        mv = self.model[name]
        start = data.draw(st.integers(lba, min(lba + n, mv.nblocks) - 1), label="start")
        end = data.draw(st.integers(start + 1, min(lba + n, mv.nblocks)), label="end")
        self.write_range(name, start, end - start, False)

    def write_range(self, name: str, lba: int, n: int, fua: bool) -> None:
        mv = self.model[name]
        payload = self.pattern(mv.bs, n)
        self.run(self.pool.volume(name).write(lba, payload, fua))
        self.change(mv, lba, payload, durable=False)
        if fua:
            self.flushed()

    def do_write_fua(self, data: st.DataObject) -> None:
        self.do_write(data, fua=True)

    def do_read(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)), label="volume")
        mv = self.model[name]
        lba, n = self.draw_range(data, mv, 256)
        got = self.run(self.pool.volume(name).read(lba, n))
        assert bytes(got) == bytes(mv.data[lba * mv.bs:(lba + n) * mv.bs]), (name, lba, n)

    def do_write_zeroes(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.writable()), label="volume")
        mv = self.model[name]
        lba, n = self.draw_range(data, mv, 4096)
        self.run(self.pool.volume(name).write_zeroes(lba, n))
        self.change(mv, lba, bytes(n * mv.bs), durable=False)

    def do_deallocate(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.writable()), label="volume")
        mv = self.model[name]
        ranges = [self.draw_range(data, mv, 2048)
                  for _ in range(data.draw(st.integers(1, 3), label="ranges"))]
        self.run(self.pool.volume(name).deallocate(ranges))
        for lba, n in ranges:
            self.change(mv, lba, bytes(n * mv.bs), durable=False)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def manage(self, data: st.DataObject) -> None:
        """One management operation (snapshots twice as often as the others)."""
        kind = data.draw(st.sampled_from(["snapshot", "snapshot", "clone", "delete", "inflate",
                                          "revert", "grow", "rename", "group", "delete_group",
                                          "shrink"]), label="operation")
        getattr(self, "op_" + kind)(data)

    def op_snapshot(self, data: st.DataObject) -> None:
        if not self.writable():
            return
        name = data.draw(st.sampled_from(self.writable()), label="volume")
        mv = self.model[name]
        snap = self.new_name()
        self.run(self.pool.volume(name).snapshot(snap))
        self.model[snap] = MVol(snap=True, bs=mv.bs, data=bytearray(mv.data), parent=mv.parent)
        mv.parent = snap
        self.flushed()

    def op_group(self, data: st.DataObject) -> None:
        """Snapshot one to three volumes at one instant as a group."""
        if not self.writable():
            return
        members = data.draw(st.lists(st.sampled_from(self.writable()), min_size=1, max_size=3,
                                     unique=True), label="members")
        self.names += 1
        group = f"g{self.names}"
        snaps = self.run(self.pool.snapshot_group(group, members))
        assert [x.name for x in snaps] == [f"{m}@{group}" for m in members]
        for m in members:
            mv = self.model[m]
            self.model[f"{m}@{group}"] = MVol(snap=True, bs=mv.bs, data=bytearray(mv.data),
                                              parent=mv.parent)
            mv.parent = f"{m}@{group}"
        self.groups[group] = [f"{m}@{group}" for m in members]
        self.flushed()

    def op_delete_group(self, data: st.DataObject) -> None:
        if not self.groups:
            return
        group = data.draw(st.sampled_from(sorted(self.groups)), label="group")
        members = self.groups.pop(group)
        assert sorted(self.run(self.pool.delete_group(group))) == sorted(members)
        for name in members:
            parent = self.model.pop(name).parent
            for mv in self.model.values():
                if mv.parent == name:
                    mv.parent = parent
        self.flushed()

    def op_shrink(self, data: st.DataObject) -> None:
        """Shrink to any whole number of blocks (the cut may fall inside a cluster)."""
        candidates = [n for n in self.writable() if self.model[n].nblocks > 1]
        if not candidates:
            return
        name = data.draw(st.sampled_from(candidates), label="volume")
        mv = self.model[name]
        blocks = data.draw(st.integers(1, mv.nblocks - 1), label="blocks")
        self.run(self.pool.volume(name).resize(blocks * mv.bs, shrink=True))
        del mv.data[blocks * mv.bs:]
        for b in [b for b in mv.pending if b >= blocks]:
            del mv.pending[b]
        self.flushed()

    def _forget_member(self, name: str, new: str | None = None) -> None:
        """A group member deleted (``new`` None) or renamed alone."""
        for group, members in list(self.groups.items()):
            if name in members:
                members[members.index(name)] = new  # type: ignore[call-overload]
                self.groups[group] = [m for m in members if m is not None]
                if not self.groups[group]:
                    del self.groups[group]

    def op_clone(self, data: st.DataObject) -> None:
        if not self.snapshots():
            return
        snap = data.draw(st.sampled_from(self.snapshots()), label="snapshot")
        name = self.new_name()
        self.run(self.pool.clone(snap, name))
        sm = self.model[snap]
        self.model[name] = MVol(snap=False, bs=sm.bs, data=bytearray(sm.data), parent=snap)
        self.flushed()

    def op_delete(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)), label="victim")
        children = sorted(n for n, v in self.model.items() if v.parent == name)
        self.run(self.pool.delete(name))  # whatever depends on it keeps its data
        self._forget_member(name)
        parent = self.model.pop(name).parent
        for c in children:
            self.model[c].parent = parent
        self.flushed()

    def op_inflate(self, data: st.DataObject) -> None:
        if not any(self.model[n].parent for n in self.writable()):
            return
        name = data.draw(st.sampled_from([n for n in self.writable() if self.model[n].parent]))
        self.run(self.pool.inflate(name))
        self.model[name].parent = None
        self.flushed()

    def op_revert(self, data: st.DataObject) -> None:
        if not any(self.model[n].parent for n in self.writable()):
            return
        name = data.draw(st.sampled_from([n for n in self.writable() if self.model[n].parent]))
        history = []
        p = self.model[name].parent
        while p is not None:
            history.append(p)
            p = self.model[p].parent
        snap = data.draw(st.sampled_from(history), label="snapshot")
        self.run(self.pool.revert(name, snap))
        mv, sm = self.model[name], self.model[snap]
        mv.data = bytearray(sm.data)
        mv.parent = snap
        self.flushed()

    def op_grow(self, data: st.DataObject) -> None:
        if not self.writable():
            return
        extra = data.draw(st.integers(1, 256), label="extra")
        name = data.draw(st.sampled_from(self.writable()), label="volume")
        mv = self.model[name]
        new = len(mv.data) + extra * 4096
        self.run(self.pool.volume(name).resize(new))
        mv.data.extend(bytes(extra * 4096))
        self.flushed()

    def op_rename(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)), label="volume")
        new = self.new_name()
        self.run(self.pool.rename(name, new))
        self._forget_member(name, new)
        self.model[new] = self.model.pop(name)
        for mv in self.model.values():
            if mv.parent == name:
                mv.parent = new
        self.flushed()

    @precondition(lambda self: self.model)
    @rule(how=st.sampled_from(["flush", "reopen", "crash"]))
    def restart(self, how: str) -> None:
        """flush: commit; reopen: clean close and open; crash: lose everything not committed
        (close the file without a commit) and open."""
        if how == "flush":
            self.run(self.pool.flush())
        elif how == "reopen":
            self.run(self.pool.aclose())
            self.pool = Pool.open(self.path)
            self.pool.commit_interval = 1e9
        else:
            self.crash()
        self.flushed()

    def crash(self) -> None:
        pool = self.pool
        assert pool._commit_task is None
        if pool._timer is not None:
            pool._timer.cancel()
        pool._shutdown()
        self.pool = Pool.open(self.path)
        self.pool.commit_interval = 1e9
        for name, mv in self.model.items():
            if not mv.pending:
                continue
            vol = self.pool.volume(name)
            for b, versions in sorted(mv.pending.items()):
                got = bytes(self.run(vol.read(b, 1)))
                assert got in versions, (name, b)
                mv.data[b * mv.bs:(b + 1) * mv.bs] = got

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def read_whole_volume(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.model)), label="volume")
        mv = self.model[name]
        got = self.run(self.pool.volume(name).read(0, mv.nblocks))
        assert bytes(got) == bytes(mv.data), name

    @invariant()
    def same_volumes_and_lineage(self) -> None:
        vols = {v.name: v for v in self.pool.volumes}
        assert set(vols) == set(self.model)
        for name, mv in self.model.items():
            v = vols[name]
            assert v.is_snapshot == mv.snap and v.block_size == mv.bs
            assert v.size_bytes == len(mv.data)
            assert (v.parent.name if v.parent else None) == mv.parent, name
        groups = {g: sorted(x.name for x in members) for g, members in self.pool.groups().items()}
        assert groups == {g: sorted(members) for g, members in self.groups.items()}


TestPool = PoolMachine.TestCase
TestPool.settings = settings(max_examples=int(os.environ.get("SBSTORE_PROP_EXAMPLES", "300")),
                             stateful_step_count=50, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.data_too_large])
