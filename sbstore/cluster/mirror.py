"""``MirroredDevice``: the primary's view of a replicated volume (docs/cluster.md, "Write path on
the primary" and "Resync").

Rules of this module:
- A write, write-zeroes or deallocate completes only when the local device and every *live*
  peer (the in-sync ones, plus one being resynchronised) acknowledged it, and the fence (the
  lease clock) allowed acknowledging both before and after. Peer frames are put on the wire
  before the local I/O starts, in call order, so local and peers see one order.
- A peer that fails while in sync leaves ``in_sync`` at once (later writes no longer wait for
  it) and gets a dirty bitmap; the write that saw the failure completes only after
  ``on_peer_lost`` (the manager's etcd txn) returned. While any loss is unconfirmed every write
  waits for that call again and fails with a path error if it raises: acknowledging a write the
  lost peer lacks while etcd still calls it in sync could lose the write at failover.
- A peer that answers STALE_EPOCH means another node is primary: ``on_deposed`` is called once
  and every I/O from then on fails with ANA Inaccessible.
- Dirty bitmap: one bit per 4 KiB of the volume, per peer that is not in sync. On a loss it gets
  the failed range and every range written since the last flush every live peer acknowledged
  (the peer may have dropped those from its volatile cache), or the whole volume if that record
  (bounded) overflowed.
- Resync sends dirty runs of at most 128 KiB. Each run is locked: new writes overlapping it wait,
  and the run is read only after the writes already in flight over it completed, so the copy
  sent is never older than a write the peer received live. Bits leave the bitmap when their run
  is sent but come back if the resync fails before the peer's final flush succeeded.
- Reads are local. They are fenced too: a node whose lease clock ran out may no longer be the
  primary, and its data may already be stale.
- Path errors are :class:`BlockDeviceError` with SCT 3 (path related), so the target answers them
  without DNR and the host's multipath retries on another path.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sbstore.cluster.replica_client import (
    PeerUnavailable,
    ReplicaClient,
    ReplicaError,
    StaleEpoch,
)
from target.blockdev import BlockDevice, BlockDeviceError

log = logging.getLogger(__name__)

# NVMe Base 2.0 Figure 105, path related status (SCT 3h). Duplicated from target.nvme.spec: the
# cluster's data path may only import target.blockdev (docs/cluster.md).
SCT_PATH = 0x3
SC_ANA_INACCESSIBLE = 0x02
SC_ANA_TRANSITION = 0x03

GRANULE_BYTES = 4096
RESYNC_RUN_BYTES = 128 * 1024
UNFLUSHED_MAX = 65536  # write ranges remembered since the last flush all live peers acknowledged
RESYNC_MAX_PASSES = 1000  # passes over the bitmap before a resync gives up (writes keep failing)


class PathError(BlockDeviceError):
    """This path cannot complete the I/O now; another path (node) may (ANA Transition)."""

    sct = SCT_PATH
    sc = SC_ANA_TRANSITION


class FenceExpired(PathError):
    """The lease clock no longer lets this node acknowledge writes."""


class Deposed(PathError):
    """Another node holds a newer epoch: this one is no longer the primary."""

    sc = SC_ANA_INACCESSIBLE


class Fence(Protocol):
    """The lease clock (membership): the epoch of our primaryship, and whether we may still
    acknowledge writes. (``epoch`` may be a plain attribute or a property.)"""

    @property
    def epoch(self) -> int: ...

    def may_acknowledge(self) -> bool: ...


class DirtyBitmap:
    """One bit per granule; bit ``i`` is byte ``i >> 3``, mask ``1 << (i & 7)``. Grows on demand
    (a volume may grow while served)."""

    _NONZERO = re.compile(rb"[^\x00]")

    def __init__(self, nbits: int, *, full: bool = False) -> None:
        self.bits = bytearray(b"\xff" if full else b"\x00") * ((nbits + 7) // 8)
        if full and nbits % 8:
            self.bits[-1] = (1 << (nbits % 8)) - 1

    def mark(self, first: int, count: int) -> None:
        self._set(first, count, True)

    def clear(self, first: int, count: int) -> None:
        self._set(first, count, False)

    def _set(self, first: int, count: int, value: bool) -> None:
        if count <= 0:
            return
        end = first + count
        bits = self.bits
        if value and (end + 7) // 8 > len(bits):
            bits.extend(bytes((end + 7) // 8 - len(bits)))
        end = min(end, len(bits) * 8)  # clearing beyond the bitmap: nothing there
        if first >= end:
            return
        i = first
        while i < end and i & 7:  # head bits, up to a byte boundary
            self._bit(i, value)
            i += 1
        whole = (end - i) // 8
        if whole:
            bits[i >> 3:(i >> 3) + whole] = (b"\xff" if value else b"\x00") * whole
            i += whole * 8
        while i < end:  # tail bits
            self._bit(i, value)
            i += 1

    def _bit(self, i: int, value: bool) -> None:
        if value:
            self.bits[i >> 3] |= 1 << (i & 7)
        else:
            self.bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF

    def test(self, i: int) -> bool:
        return (i >> 3) < len(self.bits) and bool(self.bits[i >> 3] >> (i & 7) & 1)

    def next_run(self, start: int, max_count: int) -> tuple[int, int] | None:
        """The first run of set bits at or after ``start`` (at most ``max_count`` long)."""
        bits = self.bits
        i = start
        while i & 7 and i < len(bits) * 8 and not self.test(i):
            i += 1
        if not self.test(i):
            m = self._NONZERO.search(bits, (i + 7) >> 3 if i & 7 else i >> 3)
            if m is None:
                return None
            i = m.start() * 8
            while not self.test(i):  # at most 7 steps: that byte is nonzero
                i += 1
        n = 1
        while n < max_count and self.test(i + n):
            n += 1
        return i, n

    def merge(self, other: DirtyBitmap) -> None:
        if len(other.bits) > len(self.bits):
            self.bits.extend(bytes(len(other.bits) - len(self.bits)))
        merged = int.from_bytes(self.bits, "little") | int.from_bytes(other.bits, "little")
        self.bits[:] = merged.to_bytes(len(self.bits), "little")

    def count(self) -> int:
        return int.from_bytes(self.bits, "little").bit_count()

    def any(self) -> bool:
        return self._NONZERO.search(self.bits) is not None


@dataclass
class MirrorStats:
    writes_mirrored: int = 0  # writes, write-zeroes and deallocates completed
    bytes_mirrored: int = 0  # write payload bytes completed
    peers_lost: int = 0
    resync_bytes: int = 0  # data bytes sent by resyncs (write-zeroes runs count nothing)
    resyncs_completed: int = 0


@dataclass
class _RangeLock:
    start: int  # lba
    end: int
    released: asyncio.Event


@dataclass
class _Resync:
    client: ReplicaClient
    failure: BaseException | None = None


class MirroredDevice:
    """A :class:`BlockDevice` that writes to ``local`` and to the in-sync ``peers``."""

    def __init__(self, local: BlockDevice, *, fence: Fence, peers: dict[str, ReplicaClient],
                 in_sync: set[str], on_peer_lost: Callable[[str], Awaitable[None]],
                 on_deposed: Callable[[], None],
                 initial_dirty: dict[str, Iterable[tuple[int, int]]] | None = None) -> None:
        if not set(in_sync) <= set(peers):
            raise ValueError(f"in-sync peers without a client: {set(in_sync) - set(peers)}")
        if local.block_size > GRANULE_BYTES:
            raise ValueError(f"block size {local.block_size} above the {GRANULE_BYTES}-byte granule")
        self._local = local
        self._fence = fence
        self._on_peer_lost = on_peer_lost
        self._on_deposed = on_deposed
        self.peers = dict(peers)
        self.in_sync = set(in_sync)
        self.stats = MirrorStats()
        self._blocks_per_granule = GRANULE_BYTES // local.block_size
        # Who receives each write now: the in-sync peers and those being resynchronised.
        self._live: dict[str, ReplicaClient] = {name: peers[name] for name in in_sync}
        self._dirty: dict[str, DirtyBitmap] = {}
        self._resyncing: dict[str, _Resync] = {}
        self._unconfirmed_losses: set[str] = set()
        self._loss_calls: dict[str, asyncio.Future[None]] = {}
        self._deposed = False
        # Writes admitted and not yet completed: id -> (start lba, end lba).
        self._inflight: dict[int, tuple[int, int]] = {}
        self._next_io = 0
        self._drain_event: asyncio.Event | None = None
        self._locks: list[_RangeLock] = []
        # Ranges written since the last flush every live peer acknowledged; positions are
        # absolute (``_unflushed_base`` + index) so that concurrent flushes trim correctly.
        self._unflushed: list[tuple[int, int]] = []
        self._unflushed_base = 0
        self._unflushed_overflow_at = -1  # absolute position of the last range not recorded
        for name, ranges in (initial_dirty or {}).items():
            for lba, nblocks in ranges:
                self.mark_dirty(name, lba, nblocks)

    # --- BlockDevice identity ---------------------------------------------------------------
    @property
    def block_size(self) -> int:
        return self._local.block_size

    @property
    def num_blocks(self) -> int:
        return self._local.num_blocks

    @property
    def uuid(self) -> uuid.UUID:
        return self._local.uuid

    @property
    def local(self) -> BlockDevice:
        return self._local

    # --- I/O ---------------------------------------------------------------------------------
    async def read(self, lba: int, nblocks: int) -> bytes | bytearray | memoryview:
        self._check_fence()
        return await self._local.read(lba, nblocks)

    async def write(self, lba: int, data: bytes | bytearray | memoryview, fua: bool = False) -> None:
        nblocks = len(data) // self._local.block_size
        await self._modify(
            [(lba, nblocks)],
            lambda client, epoch: [client.start_write(epoch, lba, data, fua)],
            lambda: self._local.write(lba, data, fua))
        self.stats.bytes_mirrored += len(data)

    async def write_zeroes(self, lba: int, nblocks: int) -> None:
        await self._modify(
            [(lba, nblocks)],
            lambda client, epoch: [client.start_write_zeroes(epoch, lba, nblocks)],
            lambda: self._local.write_zeroes(lba, nblocks))

    async def deallocate(self, ranges: Sequence[tuple[int, int]]) -> None:
        ranges = list(ranges)
        await self._modify(
            ranges,
            lambda client, epoch: [client.start_deallocate(epoch, lba, n) for lba, n in ranges],
            lambda: self._local.deallocate(ranges))

    async def flush(self) -> None:
        self._check_fence()
        if self._unconfirmed_losses:
            await self._confirm_losses()
        upto = self._unflushed_base + len(self._unflushed)
        epoch = self._fence.epoch
        sent, refused = self._send_all(lambda client: [client.start_flush(epoch)])
        local_error: BaseException | None = None
        try:
            await self._local.flush()
        except BaseException as e:  # noqa: BLE001 - re-raised once the peers are settled
            local_error = e
        failed = await self._settle(sent, refused, [])
        if local_error is not None:
            raise local_error
        if not failed:
            self._trim_unflushed(upto)
        self._check_fence()

    # --- the write path ------------------------------------------------------------------------
    async def _modify(self, ranges: list[tuple[int, int]],
                      send: Callable[[ReplicaClient, int], list[asyncio.Future[Any]]],
                      local_io: Callable[[], Awaitable[None]]) -> None:
        ios = self._admit(ranges)
        if ios is None:
            ios = await self._admit_slowly(ranges)
        try:
            epoch = self._fence.epoch
            sent, refused = self._send_all(lambda client: send(client, epoch))
            local_error: BaseException | None = None
            try:
                await local_io()
            except BaseException as e:  # noqa: BLE001 - re-raised once the peers are settled
                local_error = e
            await self._settle(sent, refused, ranges)
            if local_error is not None:
                raise local_error
            self._check_fence()
            self.stats.writes_mirrored += 1
        finally:
            self._release(ios)

    def _check_fence(self) -> None:
        if self._deposed:
            raise Deposed("this node is no longer the volume's primary")
        if not self._fence.may_acknowledge():
            raise FenceExpired("the lease clock ran out: this node may not acknowledge writes")

    def _admit(self, ranges: list[tuple[int, int]]) -> list[int] | None:
        """Register the ranges as in flight, or None if the slow path must wait first."""
        self._check_fence()
        if self._unconfirmed_losses or (self._locks and self._locked(ranges) is not None):
            return None
        return self._register(ranges)

    async def _admit_slowly(self, ranges: list[tuple[int, int]]) -> list[int]:
        # Each pass waits for a lock to go or a loss to be confirmed; a resync takes a run's lock
        # for one read and one send, so a write is passed over a bounded number of times.
        while True:
            self._check_fence()
            if self._unconfirmed_losses:
                await self._confirm_losses()
                continue
            lock = self._locked(ranges)
            if lock is None:
                return self._register(ranges)
            await lock.released.wait()

    def _locked(self, ranges: list[tuple[int, int]]) -> _RangeLock | None:
        for lock in self._locks:
            for lba, n in ranges:
                if lba < lock.end and lock.start < lba + n:
                    return lock
        return None

    def _register(self, ranges: list[tuple[int, int]]) -> list[int]:
        ios = []
        for lba, nblocks in ranges:
            io = self._next_io
            self._next_io += 1
            self._inflight[io] = (lba, lba + nblocks)
            ios.append(io)
            for name, bitmap in self._dirty.items():
                if name not in self._live:
                    self._mark(bitmap, lba, nblocks)
            if self._live:
                if len(self._unflushed) < UNFLUSHED_MAX:
                    self._unflushed.append((lba, nblocks))
                else:
                    self._unflushed_overflow_at = self._unflushed_base + len(self._unflushed)
        return ios

    def _release(self, ios: list[int]) -> None:
        for io in ios:
            del self._inflight[io]
        if self._drain_event is not None:
            self._drain_event.set()
            self._drain_event = None

    def _send_all(self, send: Callable[[ReplicaClient], list[asyncio.Future[Any]]]
                  ) -> tuple[list[tuple[str, asyncio.Future[Any]]], list[tuple[str, ReplicaError]]]:
        sent: list[tuple[str, asyncio.Future[Any]]] = []
        refused: list[tuple[str, ReplicaError]] = []
        for name, client in self._live.items():
            try:
                for fut in send(client):
                    sent.append((name, fut))
            except ReplicaError as e:  # already lost: fails without a round trip
                refused.append((name, e))
        return sent, refused

    async def _settle(self, sent: list[tuple[str, asyncio.Future[Any]]],
                      refused: list[tuple[str, ReplicaError]],
                      ranges: list[tuple[int, int]]) -> bool:
        """Wait for every peer's answer and act on failures; True if any peer failed."""
        failures = dict(refused)
        for name, fut in sent:
            try:
                await fut
            except ReplicaError as e:
                failures.setdefault(name, e)
        if not failures:
            return False
        if any(isinstance(e, StaleEpoch) for e in failures.values()):
            self._depose(failures)
            raise Deposed("a peer knows a newer epoch: this node was deposed")
        for name, error in failures.items():
            self._peer_failed(name, error, ranges)
        if self._unconfirmed_losses:
            await self._confirm_losses()
        return True

    def _depose(self, failures: dict[str, ReplicaError]) -> None:
        if not self._deposed:
            self._deposed = True
            log.warning("volume %s deposed: %s", self.uuid, failures)
            self._on_deposed()

    def _peer_failed(self, name: str, error: ReplicaError,
                     ranges: list[tuple[int, int]]) -> None:
        """``name`` failed an I/O over ``ranges``: from now on it is tracked, not waited for."""
        client = self._live.pop(name, None)
        if client is not None:
            client.close()
        bitmap = self._dirty.get(name)
        if bitmap is None:
            bitmap = self._dirty[name] = self._new_bitmap()
        for lba, nblocks in ranges:
            self._mark(bitmap, lba, nblocks)
        self._mark_unflushed(bitmap)
        if name in self.in_sync:
            log.warning("volume %s: peer %s lost: %s", self.uuid, name, error)
            self.in_sync.discard(name)
            self._unconfirmed_losses.add(name)
            self.stats.peers_lost += 1
        resync = self._resyncing.get(name)
        if resync is not None and resync.failure is None:
            resync.failure = error

    def _loss_call_done(self, name: str, _: object) -> None:
        self._loss_calls.pop(name, None)

    async def _confirm_losses(self) -> None:
        """Wait until ``on_peer_lost`` returned for every lost peer (one call per peer shared by
        every waiting write); a path error if it raised, so that the host retries elsewhere."""
        for name in list(self._unconfirmed_losses):
            call = self._loss_calls.get(name)
            if call is None:
                call = asyncio.ensure_future(self._on_peer_lost(name))
                self._loss_calls[name] = call
                call.add_done_callback(functools.partial(self._loss_call_done, name))
            try:
                await asyncio.shield(call)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                raise PathError(f"peer {name} is lost and could not be taken out of the "
                                f"in-sync set: {e!r}") from e
            self._unconfirmed_losses.discard(name)

    # --- dirty tracking ----------------------------------------------------------------------
    def _new_bitmap(self, *, full: bool = False) -> DirtyBitmap:
        size = self._local.num_blocks * self._local.block_size
        return DirtyBitmap((size + GRANULE_BYTES - 1) // GRANULE_BYTES, full=full)

    def _mark(self, bitmap: DirtyBitmap, lba: int, nblocks: int) -> None:
        if nblocks > 0:
            per = self._blocks_per_granule
            first = lba // per
            bitmap.mark(first, (lba + nblocks - 1) // per - first + 1)

    def _mark_unflushed(self, bitmap: DirtyBitmap) -> None:
        if self._unflushed_overflow_at >= self._unflushed_base:
            bitmap.mark(0, len(self._new_bitmap().bits) * 8)
            return
        for lba, nblocks in self._unflushed:
            self._mark(bitmap, lba, nblocks)

    def _trim_unflushed(self, upto: int) -> None:
        n = upto - self._unflushed_base
        if n > 0:
            del self._unflushed[:n]
            self._unflushed_base = upto

    def mark_dirty(self, name: str, lba: int, nblocks: int) -> None:
        """Record that peer ``name`` lacks ``[lba, lba + nblocks)`` (takeover: what the old
        primary may hold that this node never received, or the reverse)."""
        if name in self.in_sync:
            raise ValueError(f"peer {name} is in sync: it has no dirty blocks")
        bitmap = self._dirty.get(name)
        if bitmap is None:
            bitmap = self._dirty[name] = self._new_bitmap()
        self._mark(bitmap, lba, nblocks)

    def forget_peer(self, name: str) -> None:
        """Stop replicating to ``name`` and drop what is known about it (the manager moved the
        replica elsewhere, or will give it a full copy). The manager takes it out of
        ``insync/V`` in etcd first: this acknowledges writes without it from now on."""
        if name in self._resyncing:
            raise RuntimeError(f"peer {name} is being resynchronised")
        self.in_sync.discard(name)
        self._live.pop(name, None)
        self._dirty.pop(name, None)
        self._unconfirmed_losses.discard(name)
        client = self.peers.pop(name, None)
        if client is not None:
            client.close()

    def dirty_bytes(self, name: str) -> int:
        """Bytes peer ``name`` lacks: 0 in sync, the whole volume when nothing is known."""
        if name in self.in_sync:
            return 0
        bitmap = self._dirty.get(name)
        size = self._local.num_blocks * self._local.block_size
        if bitmap is None:
            return size
        return min(bitmap.count() * GRANULE_BYTES, size)

    # --- resync ------------------------------------------------------------------------------
    async def resync(self, name: str, client: ReplicaClient, *, full: bool = False) -> int:
        """Bring peer ``name`` (through the connected ``client``) up to date; it receives live
        writes meanwhile. Returns the data bytes sent. On return the peer is in ``in_sync``
        (the manager then records that in etcd); on failure it stays out, with its bitmap."""
        if name in self.in_sync:
            return 0
        if name in self._resyncing:
            raise RuntimeError(f"peer {name} is already being resynchronised")
        self._check_fence()
        bitmap = self._dirty.get(name)
        if full or bitmap is None:  # no record of what it lacks: everything
            bitmap = self._dirty[name] = self._new_bitmap(full=True)
        old = self.peers.get(name)
        if old is not None and old is not client:
            old.close()
        self.peers[name] = client
        state = self._resyncing[name] = _Resync(client)
        self._live[name] = client
        sent_runs = DirtyBitmap(0)  # runs sent but not yet covered by the peer's flush
        sent_bytes = 0
        try:
            for _ in range(RESYNC_MAX_PASSES):
                sent_bytes += await self._resync_pass(state, bitmap, sent_runs)
                await client.flush(self._fence.epoch)
                self._resync_check(state)
                if not bitmap.any():
                    break
            else:
                raise PeerUnavailable(f"peer {name}: resync made no progress")
            # The peer holds everything and gets every new write: it is in sync.
            self.in_sync.add(name)
            del self._dirty[name]
            self.stats.resyncs_completed += 1
            return sent_bytes
        except StaleEpoch as e:
            self._depose({name: e})
            raise Deposed("a peer knows a newer epoch: this node was deposed") from e
        except BaseException:
            bitmap.merge(sent_runs)
            if self._live.get(name) is client:
                del self._live[name]
            raise
        finally:
            del self._resyncing[name]
            self.stats.resync_bytes += sent_bytes

    def _resync_check(self, state: _Resync) -> None:
        self._check_fence()
        if state.failure is not None:
            raise PeerUnavailable(f"a live write to the peer failed: {state.failure!r}")

    async def _resync_pass(self, state: _Resync, bitmap: DirtyBitmap,
                           sent_runs: DirtyBitmap) -> int:
        """One sweep over the bitmap; returns the data bytes sent."""
        per = self._blocks_per_granule
        max_granules = RESYNC_RUN_BYTES // GRANULE_BYTES
        sent = 0
        cursor = 0
        while True:  # bounded: the cursor only moves forward over a finite bitmap
            self._resync_check(state)
            run = bitmap.next_run(cursor, max_granules)
            if run is None:
                return sent
            first, count = run
            cursor = first + count
            lba = first * per
            nblocks = min(count * per, self._local.num_blocks - lba)
            if nblocks <= 0:  # bits beyond a volume that shrank
                bitmap.clear(first, count)
                continue
            lock = _RangeLock(lba, lba + nblocks, asyncio.Event())
            self._locks.append(lock)
            try:
                await self._drain(lba, lba + nblocks)
                bitmap.clear(first, count)
                sent_runs.mark(first, count)
                data = bytes(await self._local.read(lba, nblocks))
                epoch = self._fence.epoch
                if data == bytes(len(data)):  # a hole: no need to carry its zeroes
                    await state.client.write_zeroes(epoch, lba, nblocks)
                else:
                    await state.client.write(epoch, lba, data)
                    sent += len(data)
            finally:
                self._locks.remove(lock)
                lock.released.set()

    async def _drain(self, start: int, end: int) -> None:
        """Wait until no write in flight overlaps ``[start, end)`` (new ones are held by the
        caller's lock, so this ends)."""
        while any(s < end and start < e for s, e in self._inflight.values()):
            if self._drain_event is None:
                self._drain_event = asyncio.Event()
            await self._drain_event.wait()
