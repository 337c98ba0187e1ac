"""The control module's persistent state: one SQLite database, ``state_dir/state.db``.

What it holds is what the pools do not: listeners and the ANA state each shows (for every
export, or for one), subsystems (exports), their allowed hosts and namespaces (subsystem NQN,
NSID, pool, volume uuid), tenants and their policies, and each volume's tenant and own limits.
Volumes themselves (names, sizes, lineage) live in the pools; rows here name them by ``(pool,
uuid)``, which a rename does not change.

Rules of this module:
- Every change is one transaction: a method that writes commits before it returns, or, inside
  ``with state.transaction():``, with the other writes of that block (all or none). A failed
  write raises and leaves the database as it was.
- Durability: WAL journal with ``synchronous=FULL``, so a committed change survives a crash or a
  power loss (the WAL is fsynced at each commit) and a reader never sees half of one. Code on
  an event loop calls :meth:`StateStore.defer_sync` once: commits then only write the WAL (tens
  of microseconds), and :meth:`StateStore.sync`, run in a worker thread, fsyncs it before the
  change is reported done. The fsync (0.8 ms on the test VM, tens of ms on a busy disk) stalled
  every I/O of the daemon once per API change; the durability of a reported change is the
  same.
- The schema enforces what it can (foreign keys with cascades for a subsystem's hosts and
  namespaces, a tenant that still has volumes cannot go, one NSID per volume per subsystem,
  a listener has an address or an interface); the service checks first so the user gets a
  sentence, not a constraint name.
- Secrets: a host's DH-HMAC-CHAP secrets (table ``host_auth``, the DHHC-1 text) live here, so
  the database and its WAL/shared-memory files are made readable by the daemon's user only
  (0600) at every open; SQLite gives the -wal and -shm files the database file's mode. The
  table is created when missing, so a database made before it opens unchanged (no schema
  version change: older code ignores the extra table).
- Snapshot schedules (tables ``schedules`` and ``schedule_snapshots``) are created at open when
  missing, like ``host_auth``.
- Reservations (table ``reservations``, one row per volume that ever had a registrant): the
  volume's NVMe reservation state as target/reservation.py keeps it, written at every change
  before the command completes, read at start (persist through power loss). Created when
  missing, like ``host_auth``.
- Used from the event loop's thread only (except :meth:`StateStore.sync`, which touches files,
  not the connection); each write is a few rows, fast enough to run inline.
"""
from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbstore.config import QosPolicy
from target.reservation import ReservationRecord

SCHEMA_VERSION = 1
# With deferred syncs SQLite does not checkpoint by itself (a checkpoint fsyncs, on the loop);
# sync() checkpoints, in its thread, once the WAL is larger than this.
CHECKPOINT_WAL_BYTES = 4 << 20
_POLICY_FIELDS = QosPolicy.field_names()


class StateError(Exception):
    """The state database cannot be opened or is not ours."""


@dataclass(frozen=True)
class ListenerRecord:
    """``source`` is ``config`` (opened from the config at every start) or ``api`` (added with
    the API, restored at start). ``id`` is the NVMe port id (``portid``), stable across
    restarts."""

    id: int
    source: str
    port: int
    address: str | None = None
    interface: str | None = None
    # NVMe/TCP TLS mode. Not stored: only config listeners have one, reasserted at each start.
    tls: str = "off"


@dataclass(frozen=True)
class AnaRecord:
    """The ANA state (a name, see target.ana.STATE_NAMES) listener ``listener`` shows for
    export ``export``, or for every export that has no setting of its own (``export`` None)."""

    listener: int
    export: str | None
    state: str


@dataclass(frozen=True)
class NamespaceRecord:
    nsid: int
    pool: str
    volume_uuid: str


@dataclass(frozen=True)
class SubsystemRecord:
    nqn: str
    allow_any_host: bool
    serial: str
    model: str
    hosts: tuple[str, ...] = ()
    namespaces: tuple[NamespaceRecord, ...] = ()


@dataclass(frozen=True, repr=False)
class HostAuthRecord:
    """A host's DH-HMAC-CHAP settings on one export. ``dhchap_key``/``ctrl_key`` are the
    secrets themselves (DHHC-1 text): never log or return them."""

    subsystem: str
    host_nqn: str
    dhchap_key: str
    ctrl_key: str | None
    hashes: tuple[str, ...]
    dhgroups: tuple[str, ...]

    def __repr__(self) -> str:
        return (f"HostAuthRecord({self.subsystem!r}, {self.host_nqn!r}, "
                f"bidirectional={self.ctrl_key is not None})")


@dataclass(frozen=True)
class TenantRecord:
    name: str
    policy: QosPolicy


@dataclass(frozen=True)
class ScheduleRecord:
    """Snapshot ``(pool, volume_uuid)`` (or every volume of ``tenant``) every ``every_s``
    seconds, keeping the newest ``keep`` it took per volume. ``last_run``: when it last ran
    (seconds since the epoch; None: never)."""

    id: int
    every_s: int
    keep: int
    pool: str | None = None
    volume_uuid: str | None = None
    tenant: str | None = None
    last_run: float | None = None


@dataclass(frozen=True)
class ScheduledSnapshot:
    """A snapshot schedule ``schedule`` took (or is taking) of volume ``origin_uuid`` at
    ``taken``, named ``name`` when taken. ``uuid`` None: intended, not known to be taken yet
    (written before the snapshot is, so a crash cannot leave a snapshot no schedule keeps)."""

    schedule: int
    pool: str
    name: str
    uuid: str | None
    origin_uuid: str
    taken: float


@dataclass(frozen=True)
class VolumeRecord:
    """A volume's tenant and its own limits (None: only the tenant's apply)."""

    pool: str
    uuid: str
    tenant: str
    limits: QosPolicy | None = None


def _policy_columns(prefix: str = "", nullable: bool = False) -> str:
    kinds = {"burst_s": "REAL"}
    null = "" if nullable else " NOT NULL"
    return ", ".join(f"{prefix}{name} {kinds.get(name, 'INTEGER')}{null}"
                     for name in _POLICY_FIELDS)


_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE listeners (
    id INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 65535),
    source TEXT NOT NULL CHECK (source IN ('config', 'api')),
    address TEXT, interface TEXT,
    port INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
    CHECK ((address IS NULL) <> (interface IS NULL)));
CREATE TABLE subsystems (
    nqn TEXT PRIMARY KEY,
    allow_any_host INTEGER NOT NULL,
    serial TEXT NOT NULL, model TEXT NOT NULL);
CREATE TABLE hosts (
    subsystem TEXT NOT NULL REFERENCES subsystems (nqn) ON DELETE CASCADE,
    host_nqn TEXT NOT NULL,
    PRIMARY KEY (subsystem, host_nqn));
CREATE TABLE namespaces (
    subsystem TEXT NOT NULL REFERENCES subsystems (nqn) ON DELETE CASCADE,
    nsid INTEGER NOT NULL CHECK (nsid >= 1),
    pool TEXT NOT NULL, volume_uuid TEXT NOT NULL,
    PRIMARY KEY (subsystem, nsid), UNIQUE (subsystem, pool, volume_uuid));
CREATE TABLE tenants (name TEXT PRIMARY KEY, {_policy_columns()});
CREATE TABLE IF NOT EXISTS ana_states (
    listener INTEGER NOT NULL REFERENCES listeners (id) ON DELETE CASCADE,
    subsystem TEXT REFERENCES subsystems (nqn) ON DELETE CASCADE,
    state TEXT NOT NULL);
CREATE TABLE volumes (
    pool TEXT NOT NULL, uuid TEXT NOT NULL,
    tenant TEXT NOT NULL REFERENCES tenants (name) ON DELETE RESTRICT,
    has_limits INTEGER NOT NULL DEFAULT 0, {_policy_columns(nullable=True)},
    PRIMARY KEY (pool, uuid));
"""

# Added after schema version 1; created at open when missing.
_HOST_AUTH_TABLE = """
CREATE TABLE IF NOT EXISTS host_auth (
    subsystem TEXT NOT NULL, host_nqn TEXT NOT NULL,
    dhchap_key TEXT NOT NULL, ctrl_key TEXT,
    hashes TEXT NOT NULL, dhgroups TEXT NOT NULL,
    PRIMARY KEY (subsystem, host_nqn),
    FOREIGN KEY (subsystem, host_nqn) REFERENCES hosts (subsystem, host_nqn)
        ON DELETE CASCADE)"""
SECRET_FILE_MODE = 0o600

# Snapshot schedules (added after schema version 1; created at open when missing, ignored by
# older code): what to snapshot (a volume, or every volume of a tenant), how often, how many
# to keep; and which snapshots each schedule took (retention counts those, per origin volume).
_SCHEDULE_TABLES = (
    """CREATE TABLE IF NOT EXISTS schedules (
    id INTEGER PRIMARY KEY,
    pool TEXT, volume_uuid TEXT,
    tenant TEXT REFERENCES tenants (name) ON DELETE CASCADE,
    every_s INTEGER NOT NULL CHECK (every_s > 0),
    keep INTEGER NOT NULL CHECK (keep >= 1),
    last_run REAL,
    CHECK ((volume_uuid IS NULL) <> (tenant IS NULL)),
    CHECK ((volume_uuid IS NULL) = (pool IS NULL)))""",
    """CREATE TABLE IF NOT EXISTS schedule_snapshots (
    schedule INTEGER NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    pool TEXT NOT NULL, name TEXT NOT NULL, uuid TEXT,
    origin_uuid TEXT NOT NULL, taken REAL NOT NULL,
    UNIQUE (schedule, pool, name))""",
)


# Added after schema version 1; created at open when missing. ``registrants`` is JSON:
# [[host id (hex), key], ...] in registration order (keys are u64: beyond SQLite's INTEGER).
_RESERVATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS reservations (
    pool TEXT NOT NULL, uuid TEXT NOT NULL,
    registrants TEXT NOT NULL, holder TEXT,
    rtype INTEGER NOT NULL, generation INTEGER NOT NULL, ptpl INTEGER NOT NULL,
    PRIMARY KEY (pool, uuid))"""

DEFAULT_TENANT = "default"
_ANA_TABLE = next(x for x in _SCHEMA.split(";") if "ana_states" in x)


class StateStore:
    """The database. ``StateStore(path)`` opens (creating it and the ``default`` tenant if
    new); ``close()`` when done."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_s)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot open the state database: {exc}") from None
        self._depth = 0
        self.created = False  # True when this open made the database
        self._wal = False
        self._deferred = False
        self._unsynced = False
        self._wal_inode: int | None = None  # the WAL whose directory entry is synced
        self._restrict_mode()
        try:
            self._db.execute("PRAGMA foreign_keys = ON")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            self._wal = str(mode).lower() == "wal"
            if not self._wal:
                self._db.execute("PRAGMA journal_mode = DELETE")
            self._db.execute("PRAGMA synchronous = FULL")
            self._init_schema()
            self._db.execute(_HOST_AUTH_TABLE)
            for table in _SCHEDULE_TABLES:
                self._db.execute(table)
            self._db.execute(_RESERVATIONS_TABLE)
            self._restrict_mode()  # the -wal and -shm files WAL mode just made
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StateError(f"{self.path}: not a usable sbstore state database: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _init_schema(self) -> None:
        tables = {r[0] for r in self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
                self._put_tenant(TenantRecord(DEFAULT_TENANT, QosPolicy()))
            self.created = True
            return
        if "meta" not in tables:
            raise StateError(f"{self.path}: not an sbstore state database (no meta table)")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or row[0] != str(SCHEMA_VERSION):
            raise StateError(f"{self.path}: state schema version {row and row[0]!r}, this "
                             f"sbstore reads version {SCHEMA_VERSION}")
        if "ana_states" not in tables:
            # Added to version 1 later: an older sbstore ignores the table (its listeners
            # then show every path optimized), so the version stays.
            with self.transaction():
                self._db.execute(_ANA_TABLE)

    def _restrict_mode(self) -> None:
        """The database holds secrets: owner read/write only, for it and its companions."""
        for path in (self.path, self.wal_path, self.path.with_name(self.path.name + "-shm")):
            try:
                if os.stat(path).st_mode & 0o777 != SECRET_FILE_MODE:
                    os.chmod(path, SECRET_FILE_MODE)
            except FileNotFoundError:
                pass
            except PermissionError:  # not ours: opening will tell if it matters
                pass

    def close(self) -> None:
        self._db.close()  # the last connection checkpoints the WAL, with its fsyncs

    # --- durability ---------------------------------------------------------------------------

    def defer_sync(self) -> bool:
        """From now on a commit only writes the WAL, and :attr:`needs_sync` says that
        :meth:`sync` must run before the change is reported done. False (and nothing changes)
        when the database is not in WAL mode: then every commit stays synchronous."""
        if not self._wal:
            return False
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint = 0")
        self._deferred = True
        return True

    @property
    def needs_sync(self) -> bool:
        """A commit made since the last :meth:`sync` began is not known to be on disk."""
        return self._unsynced

    @property
    def wal_path(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    def sync(self) -> None:
        """Make every change committed before this call durable: fsync the WAL (and its
        directory entry, once per WAL file), and checkpoint it when it has grown large.

        Safe in another thread while the loop goes on using the database: it opens the files
        itself and never touches this object's connection. Blocks on the disk."""
        self._unsynced = False  # first: a commit that lands meanwhile sets it again
        try:
            fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # no WAL: everything is in the database file, synced at checkpoint
        try:
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if st.st_ino != self._wal_inode:
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            self._wal_inode = st.st_ino
        if st.st_size > CHECKPOINT_WAL_BYTES:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database through a connection of this thread (PASSIVE: it
        waits for nobody; the writer restarts the WAL afterwards)."""
        db = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.OperationalError:
            pass  # busy: the next sync tries again
        finally:
            db.close()

    # --- transactions -------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: they commit together at the end of the block, or not at all."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        try:
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        if self._deferred:
            self._unsynced = True

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self.transaction():
            return self._db.execute(sql, params)

    # --- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # --- listeners ----------------------------------------------------------------------------

    def listeners(self) -> list[ListenerRecord]:
        return [ListenerRecord(id=r[0], source=r[1], address=r[2], interface=r[3], port=r[4])
                for r in self._db.execute(
                    "SELECT id, source, address, interface, port FROM listeners ORDER BY id")]

    def add_listener(self, rec: ListenerRecord) -> None:
        self._write("INSERT INTO listeners (id, source, address, interface, port) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (rec.id, rec.source, rec.address, rec.interface, rec.port))

    def set_listener_port(self, listener_id: int, port: int) -> None:
        self._write("UPDATE listeners SET port = ? WHERE id = ?", (port, listener_id))

    def remove_listener(self, listener_id: int) -> None:
        self._write("DELETE FROM listeners WHERE id = ?", (listener_id,))

    # --- ANA states ---------------------------------------------------------------------------

    def ana_states(self) -> list[AnaRecord]:
        return [AnaRecord(listener, export, state) for listener, export, state in self._db.execute(
            "SELECT listener, subsystem, state FROM ana_states "
            "ORDER BY listener, subsystem IS NOT NULL, subsystem")]

    def set_ana_state(self, listener_id: int, export: str | None, state: str | None) -> None:
        """Set (``state`` None: remove) what listener ``listener_id`` shows for ``export``
        (None: for every export without a setting of its own)."""
        with self.transaction():
            self._db.execute("DELETE FROM ana_states WHERE listener = ? AND subsystem IS ?",
                             (listener_id, export))
            if state is not None:
                self._db.execute("INSERT INTO ana_states (listener, subsystem, state) "
                                 "VALUES (?, ?, ?)", (listener_id, export, state))

    # --- subsystems, hosts, namespaces --------------------------------------------------------

    def subsystems(self) -> list[SubsystemRecord]:
        hosts: dict[str, list[str]] = {}
        for sub, host in self._db.execute(
                "SELECT subsystem, host_nqn FROM hosts ORDER BY subsystem, host_nqn"):
            hosts.setdefault(sub, []).append(host)
        namespaces: dict[str, list[NamespaceRecord]] = {}
        for sub, nsid, pool, uuid in self._db.execute(
                "SELECT subsystem, nsid, pool, volume_uuid FROM namespaces "
                "ORDER BY subsystem, nsid"):
            namespaces.setdefault(sub, []).append(NamespaceRecord(nsid, pool, uuid))
        return [SubsystemRecord(nqn=nqn, allow_any_host=bool(any_host), serial=serial,
                                model=model, hosts=tuple(hosts.get(nqn, ())),
                                namespaces=tuple(namespaces.get(nqn, ())))
                for nqn, any_host, serial, model in self._db.execute(
                    "SELECT nqn, allow_any_host, serial, model FROM subsystems ORDER BY nqn")]

    def add_subsystem(self, rec: SubsystemRecord) -> None:
        with self.transaction():
            self._db.execute("INSERT INTO subsystems (nqn, allow_any_host, serial, model) "
                             "VALUES (?, ?, ?, ?)",
                             (rec.nqn, int(rec.allow_any_host), rec.serial, rec.model))
            for host in rec.hosts:
                self._db.execute("INSERT INTO hosts VALUES (?, ?)", (rec.nqn, host))
            for ns in rec.namespaces:
                self._db.execute("INSERT INTO namespaces VALUES (?, ?, ?, ?)",
                                 (rec.nqn, ns.nsid, ns.pool, ns.volume_uuid))

    def remove_subsystem(self, nqn: str) -> None:
        self._write("DELETE FROM subsystems WHERE nqn = ?", (nqn,))

    def set_allow_any_host(self, nqn: str, allow: bool) -> None:
        self._write("UPDATE subsystems SET allow_any_host = ? WHERE nqn = ?", (int(allow), nqn))

    def add_host(self, nqn: str, host_nqn: str) -> None:
        self._write("INSERT INTO hosts VALUES (?, ?)", (nqn, host_nqn))

    def remove_host(self, nqn: str, host_nqn: str) -> None:
        self._write("DELETE FROM hosts WHERE subsystem = ? AND host_nqn = ?", (nqn, host_nqn))

    def host_auth(self) -> list[HostAuthRecord]:
        return [HostAuthRecord(sub, host, key, ctrl, tuple(json.loads(hashes)),
                               tuple(json.loads(groups)))
                for sub, host, key, ctrl, hashes, groups in self._db.execute(
                    "SELECT subsystem, host_nqn, dhchap_key, ctrl_key, hashes, dhgroups "
                    "FROM host_auth ORDER BY subsystem, host_nqn")]

    def put_host_auth(self, rec: HostAuthRecord) -> None:
        self._write("INSERT OR REPLACE INTO host_auth VALUES (?, ?, ?, ?, ?, ?)",
                    (rec.subsystem, rec.host_nqn, rec.dhchap_key, rec.ctrl_key,
                     json.dumps(list(rec.hashes)), json.dumps(list(rec.dhgroups))))

    def remove_host_auth(self, nqn: str, host_nqn: str) -> None:
        self._write("DELETE FROM host_auth WHERE subsystem = ? AND host_nqn = ?",
                    (nqn, host_nqn))

    def add_namespace(self, nqn: str, ns: NamespaceRecord) -> None:
        self._write("INSERT INTO namespaces VALUES (?, ?, ?, ?)",
                    (nqn, ns.nsid, ns.pool, ns.volume_uuid))

    def remove_namespace(self, nqn: str, nsid: int) -> None:
        self._write("DELETE FROM namespaces WHERE subsystem = ? AND nsid = ?", (nqn, nsid))

    # --- tenants and volumes ------------------------------------------------------------------

    def tenants(self) -> list[TenantRecord]:
        cols = ", ".join(_POLICY_FIELDS)
        return [TenantRecord(r[0], QosPolicy(**dict(zip(_POLICY_FIELDS, r[1:], strict=True))))
                for r in self._db.execute(f"SELECT name, {cols} FROM tenants ORDER BY name")]

    def _put_tenant(self, rec: TenantRecord) -> None:
        cols = ", ".join(_POLICY_FIELDS)
        marks = ", ".join("?" for _ in _POLICY_FIELDS)
        # An upsert, not INSERT OR REPLACE: replacing deletes the row first, which the
        # volumes' foreign key refuses while the tenant has volumes.
        updates = ", ".join(f"{f} = excluded.{f}" for f in _POLICY_FIELDS)
        self._db.execute(f"INSERT INTO tenants (name, {cols}) VALUES (?, {marks}) "
                         f"ON CONFLICT (name) DO UPDATE SET {updates}",
                         (rec.name, *(getattr(rec.policy, f) for f in _POLICY_FIELDS)))

    def put_tenant(self, rec: TenantRecord) -> None:
        """Create or replace a tenant's policy."""
        with self.transaction():
            self._put_tenant(rec)

    def remove_tenant(self, name: str) -> None:
        self._write("DELETE FROM tenants WHERE name = ?", (name,))

    def volumes(self) -> list[VolumeRecord]:
        cols = ", ".join(_POLICY_FIELDS)
        out = []
        for r in self._db.execute(
                f"SELECT pool, uuid, tenant, has_limits, {cols} FROM volumes ORDER BY pool, uuid"):
            limits = (QosPolicy(**dict(zip(_POLICY_FIELDS, r[4:], strict=True)))
                      if r[3] else None)
            out.append(VolumeRecord(pool=r[0], uuid=r[1], tenant=r[2], limits=limits))
        return out

    def put_volume(self, rec: VolumeRecord) -> None:
        """Create or replace a volume's tenant and limits."""
        cols = ", ".join(_POLICY_FIELDS)
        marks = ", ".join("?" for _ in _POLICY_FIELDS)
        values = tuple(getattr(rec.limits, f) if rec.limits else None for f in _POLICY_FIELDS)
        updates = ", ".join(f"{f} = excluded.{f}" for f in ("tenant", "has_limits",
                                                              *_POLICY_FIELDS))
        self._write(f"INSERT INTO volumes (pool, uuid, tenant, has_limits, {cols}) "
                    f"VALUES (?, ?, ?, ?, {marks}) ON CONFLICT (pool, uuid) DO UPDATE SET "
                    f"{updates}",
                    (rec.pool, rec.uuid, rec.tenant, int(rec.limits is not None), *values))

    def remove_volume(self, pool: str, uuid: str) -> None:
        self._write("DELETE FROM volumes WHERE pool = ? AND uuid = ?", (pool, uuid))

    # --- snapshot schedules -------------------------------------------------------------------

    def schedules(self) -> list[ScheduleRecord]:
        return [ScheduleRecord(id=r[0], every_s=r[1], keep=r[2], pool=r[3], volume_uuid=r[4],
                               tenant=r[5], last_run=r[6])
                for r in self._db.execute(
                    "SELECT id, every_s, keep, pool, volume_uuid, tenant, last_run "
                    "FROM schedules ORDER BY id")]

    def add_schedule(self, rec: ScheduleRecord) -> int:
        """Store a new schedule (``rec.id`` is ignored); returns its id."""
        cur = self._write("INSERT INTO schedules (every_s, keep, pool, volume_uuid, tenant, "
                          "last_run) VALUES (?, ?, ?, ?, ?, ?)",
                          (rec.every_s, rec.keep, rec.pool, rec.volume_uuid, rec.tenant,
                           rec.last_run))
        return int(cur.lastrowid or 0)

    def remove_schedule(self, schedule_id: int) -> None:
        self._write("DELETE FROM schedules WHERE id = ?", (schedule_id,))

    def set_schedule_run(self, schedule_id: int, when: float) -> None:
        self._write("UPDATE schedules SET last_run = ? WHERE id = ?", (when, schedule_id))

    def scheduled_snapshots(self, schedule_id: int | None = None) -> list[ScheduledSnapshot]:
        """What ``schedule_id`` (None: every schedule) took, oldest first."""
        where, params = ("WHERE schedule = ?", (schedule_id,)) if schedule_id is not None \
            else ("", ())
        return [ScheduledSnapshot(*r) for r in self._db.execute(
            f"SELECT schedule, pool, name, uuid, origin_uuid, taken FROM schedule_snapshots "
            f"{where} ORDER BY taken, name", params)]

    def add_scheduled_snapshot(self, rec: ScheduledSnapshot) -> None:
        self._write("INSERT OR IGNORE INTO schedule_snapshots VALUES (?, ?, ?, ?, ?, ?)",
                    (rec.schedule, rec.pool, rec.name, rec.uuid, rec.origin_uuid, rec.taken))

    def set_scheduled_snapshot_uuid(self, pool: str, name: str, uuid: str) -> None:
        """The intended snapshot ``name`` of ``pool`` is taken: it is ``uuid``."""
        self._write("UPDATE schedule_snapshots SET uuid = ? WHERE pool = ? AND name = ? AND "
                    "uuid IS NULL", (uuid, pool, name))

    def forget_scheduled_snapshot(self, schedule_id: int | None, pool: str, name: str,
                                  uuid: str | None) -> None:
        """``schedule_id`` no longer keeps the snapshot (None: no schedule does)."""
        where = "pool = ? AND name = ? AND uuid IS ?"
        params: tuple[Any, ...] = (pool, name, uuid)
        if schedule_id is not None:
            where += " AND schedule = ?"
            params += (schedule_id,)
        self._write(f"DELETE FROM schedule_snapshots WHERE {where}", params)

    # --- reservations -------------------------------------------------------------------------

    def reservations(self) -> dict[tuple[str, str], ReservationRecord]:
        """(pool, volume uuid) -> the volume's reservation state as last persisted."""
        out = {}
        for pool, uuid, regs, holder, rtype, gen, ptpl in self._db.execute(
                "SELECT pool, uuid, registrants, holder, rtype, generation, ptpl "
                "FROM reservations"):
            out[(pool, uuid)] = ReservationRecord(
                tuple((bytes.fromhex(h), int(k)) for h, k in json.loads(regs)),
                None if holder is None else bytes.fromhex(holder), rtype, gen, bool(ptpl))
        return out

    def put_reservation(self, pool: str, uuid: str, rec: ReservationRecord) -> None:
        regs = json.dumps([[h.hex(), k] for h, k in rec.registrants])
        self._write("INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (pool, uuid, regs, None if rec.holder is None else rec.holder.hex(),
                     rec.rtype, rec.generation, int(rec.ptpl)))

    def remove_reservation(self, pool: str, uuid: str) -> None:
        self._write("DELETE FROM reservations WHERE pool = ? AND uuid = ?", (pool, uuid))

    # --- whole-state views (tests, diagnostics) -----------------------------------------------

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, sorted: compare two dumps to see whether anything
        changed."""
        out = {}
        for (table,) in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
            out[table] = sorted(self._db.execute(f"SELECT * FROM {table}").fetchall(),
                                key=json.dumps)
        return out
