"""Admin commands (after Linux drivers/nvme/target/admin-cmd.c): Identify, Get Log Page,
Set/Get Features, Keep Alive, Asynchronous Event Request, Abort.

Rules:
- ``execute`` returns :class:`target.response.Done` or None (an AER that completes later), and
  raises ``target.nvme.status`` errors; the session turns those into completions.
- A discovery controller takes only Identify Controller, Get Log Page (discovery, error
  information), Set/Get Features (Keep Alive Timer, Asynchronous Event Configuration), Keep
  Alive and Asynchronous Event Request; other opcodes: Invalid Opcode.
- Commands returning data check the SGL length against what they return (Identify 4096 bytes,
  Get Log Page NUMD x 4): a mismatch is Data SGL Length Invalid, as nvmet answers.
- NSIDs: 0 and FFFFFFFFh where a namespace is needed, or beyond NN: Invalid Namespace; an
  inactive NSID within NN reads as a zeroed Identify Namespace (Base 2.0 §5.17.2.1).
- ANA (target/ana.py): an I/O controller reports ANA (CMIC bit 3, ANACAP, ANATT, ANAGRPMAX,
  NANAGRPID, each namespace's ANAGRPID) and serves the ANA log (0Ch) of its own path: the
  states of the groups on the port it connected through, with their NSIDs unless the host
  asked for groups only (LSP bit 0, RGO).
- Get Log Page: NUMD dwords from a dword-aligned offset (Invalid Field otherwise or past the page
  end), zero-filled past the end of the page, at most MDTS bytes. Without RAE, reading a log
  clears its pending event (and the Changed Namespace List).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from target import discovery
from target.ana import ANATT_S, MAX_ANA_GROUPS
from target.blockdev import USED_BLOCKS
from target.nvme import status as st
from target.nvme.identify import (
    IdentifyController,
    IdentifyNamespace,
    push_identify_controller,
    push_identify_namespace,
    push_namespace_list,
    push_ns_id_descriptors,
)
from target.nvme.logpages import (
    SmartLog,
    data_units,
    push_ana_log,
    push_changed_ns_list,
    push_effects_log,
    push_error_log,
    push_fw_slot_log,
    push_smart_log,
    slice_log,
)
from target.nvme.reservations import push_notification_log
from target.nvme.spec import (
    AEC_ANA_CHANGE,
    AEC_DISCOVERY_CHANGE,
    AEC_NS_ATTRIBUTE,
    AEC_SMART_MASK,
    ANA_LSP_RGO,
    ANACAP_CHANGE,
    ANACAP_GRPID_STATIC,
    ANACAP_INACCESSIBLE,
    ANACAP_NON_OPTIMIZED,
    ANACAP_OPTIMIZED,
    ANACAP_PERSISTENT_LOSS,
    CMIC_ANA,
    CMIC_MULTI_CTRL,
    CNTRLTYPE_DISCOVERY,
    CNTRLTYPE_IO,
    CSI_NVM,
    CTRATT_HOST_ID_128,
    CTRATT_TBKAS,
    DLFEAT_READ_ZEROES,
    DLFEAT_WRITE_ZEROES_DEAC,
    IDENTIFY_DATA_SIZE,
    IOCQES,
    IOSQES,
    LPA_CMD_EFFECTS,
    LPA_EXTENDED,
    LPA_SMART_PER_NS,
    NMIC_SHARED,
    NSFEAT_THIN_PROVISIONING,
    NSID_ALL,
    OFCS_DISCONNECT,
    ONCS_DSM,
    ONCS_RESERVATIONS,
    ONCS_WRITE_ZEROES,
    RESCAP_ALL,
    SGLS_OFFSET,
    SGLS_SUPPORTED,
    VWC_FLUSH_NSID_ALL,
    VWC_PRESENT,
    AdminOpcode,
    FeatureId,
    HostFeatureId,
    IdentifyCns,
    IoOpcode,
    LogPageId,
)
from target.nvme.structs import Sqe
from target.response import Done

if TYPE_CHECKING:
    from target.controller import Controller, QueueSession
    from target.subsystem import Namespace

Handler = Callable[["QueueSession", "Controller", Sqe, "memoryview | None", float], "Done | None"]

SUPPORTED_ADMIN_OPCODES = (AdminOpcode.GET_LOG_PAGE, AdminOpcode.IDENTIFY, AdminOpcode.ABORT,
                           AdminOpcode.SET_FEATURES, AdminOpcode.GET_FEATURES,
                           AdminOpcode.ASYNC_EVENT_REQUEST, AdminOpcode.KEEP_ALIVE,
                           AdminOpcode.FABRICS)
SUPPORTED_IO_OPCODES = (IoOpcode.FLUSH, IoOpcode.WRITE, IoOpcode.READ, IoOpcode.WRITE_ZEROES,
                        IoOpcode.DATASET_MANAGEMENT, IoOpcode.RESERVATION_REGISTER,
                        IoOpcode.RESERVATION_REPORT, IoOpcode.RESERVATION_ACQUIRE,
                        IoOpcode.RESERVATION_RELEASE)
WRITING_IO_OPCODES = (IoOpcode.WRITE, IoOpcode.WRITE_ZEROES, IoOpcode.DATASET_MANAGEMENT)
AERL = 3  # Identify AERL, 0's based: four Asynchronous Event Requests may be outstanding
ERROR_LOG_ENTRIES = 64  # Identify ELPE + 1: the Error Information log keeps the last 64
KAS_100MS = 10  # Identify KAS: keep-alive granularity, 100 ms units
PS0_MAX_POWER_CW = 2500  # power state 0: 25 W, a plausible figure for a network controller
TEMPERATURE_OVER_DEFAULT_K = 0x0157  # 343 K (70 C): the default over-temperature threshold
IO_OAES = AEC_NS_ATTRIBUTE | AEC_ANA_CHANGE  # the notices an I/O controller sends
ANACAP = (ANACAP_OPTIMIZED | ANACAP_NON_OPTIMIZED | ANACAP_INACCESSIBLE | ANACAP_PERSISTENT_LOSS
          | ANACAP_CHANGE | ANACAP_GRPID_STATIC)


def _expect_length(cmd: Sqe, nbytes: int) -> None:
    if cmd.sgl_length != nbytes:
        raise st.SglDataLengthInvalid(f"command returns {nbytes} bytes, SGL is "
                                      f"{cmd.sgl_length}", error_loc=24)


# --- Identify ------------------------------------------------------------------------------------

def identify_controller_data(ctrl: Controller) -> bytes:
    t, sub = ctrl.target, ctrl.subsystem
    io = not ctrl.is_discovery
    return push_identify_controller(IdentifyController(
        cntlid=ctrl.cntlid, serial=sub.serial, model=sub.model, firmware=sub.firmware,
        subnqn=sub.nqn, ver=ctrl.vs, cntrltype=CNTRLTYPE_IO if io else CNTRLTYPE_DISCOVERY,
        mdts=(t.max_data_transfer >> 12).bit_length() - 1,  # units of MPSMIN (4 KiB)
        cmic=(CMIC_MULTI_CTRL | CMIC_ANA) if io else 0,
        oaes=IO_OAES if io else AEC_DISCOVERY_CHANGE,
        ctratt=CTRATT_HOST_ID_128 | CTRATT_TBKAS,
        acl=3, aerl=AERL, frmw=0x03 if io else 0,  # one firmware slot, read-only
        lpa=(LPA_SMART_PER_NS | LPA_CMD_EFFECTS | LPA_EXTENDED) if io else LPA_EXTENDED,
        elpe=ERROR_LOG_ENTRIES - 1, kas=KAS_100MS,
        anatt=ANATT_S if io else 0, anacap=ANACAP if io else 0,
        anagrpmax=MAX_ANA_GROUPS if io else 0, nanagrpid=MAX_ANA_GROUPS if io else 0,
        sqes=IOSQES << 4 | IOSQES, cqes=IOCQES << 4 | IOCQES, maxcmd=t.queue_entries,
        nn=sub.max_namespaces, mnan=sub.max_namespaces,
        oncs=(ONCS_DSM | ONCS_WRITE_ZEROES | ONCS_RESERVATIONS) if io else 0,
        vwc=(VWC_PRESENT | VWC_FLUSH_NSID_ALL) if io else 0,
        sgls=SGLS_SUPPORTED | SGLS_OFFSET,
        ioccsz=(64 + t.incapsule_data_size) // 16 if io else 0, iorcsz=1 if io else 0,
        msdbd=1, ofcs=OFCS_DISCONNECT if io else 0,
        ps0_max_power_cw=PS0_MAX_POWER_CW if io else 0))


def identify_namespace_data(ns: Namespace) -> bytes:
    ns.refresh()  # the host learns the size here: check I/O against the same figure
    n = ns.nblocks
    # NUSE: what a thin device really holds (target.blockdev.USED_BLOCKS), else all of it.
    used = getattr(ns.device, USED_BLOCKS, None)
    nuse = n if used is None else min(n, used)
    return push_identify_namespace(IdentifyNamespace(
        nsze=n, ncap=n, nuse=nuse, lbads=ns.lba_shift, nsfeat=NSFEAT_THIN_PROVISIONING,
        nmic=NMIC_SHARED, rescap=RESCAP_ALL, dlfeat=DLFEAT_READ_ZEROES | DLFEAT_WRITE_ZEROES_DEAC,
        nvmcap=n * ns.block_size, anagrpid=ns.anagrpid, nguid=ns.nguid, eui64=ns.eui64))


def _check_nsid(ctrl: Controller, nsid: int) -> Namespace | None:
    """A valid NSID's namespace (None if inactive); invalid NSIDs raise."""
    if nsid == 0 or nsid > ctrl.subsystem.max_namespaces:
        raise st.InvalidNamespace(f"NSID {nsid:#x}", error_loc=4)
    return ctrl.subsystem.namespaces.get(nsid)


def _identify(session: QueueSession, ctrl: Controller, cmd: Sqe, data: memoryview | None,
              now: float) -> Done:
    cns = cmd.cdw10 & 0xFF
    csi = cmd.cdw11 >> 24
    _expect_length(cmd, IDENTIFY_DATA_SIZE)
    if cns == IdentifyCns.CONTROLLER:
        return Done(data=identify_controller_data(ctrl))
    if ctrl.is_discovery:
        raise st.InvalidField(f"CNS {cns:#x} on a discovery controller", error_loc=40)
    if cns == IdentifyCns.NAMESPACE:
        ns = _check_nsid(ctrl, cmd.nsid)
        return Done(data=bytes(IDENTIFY_DATA_SIZE) if ns is None else identify_namespace_data(ns))
    if cns in (IdentifyCns.ACTIVE_NAMESPACE_LIST, IdentifyCns.ACTIVE_NS_LIST_CSI):
        if cns == IdentifyCns.ACTIVE_NS_LIST_CSI and csi != CSI_NVM:
            raise st.InvalidField(f"CSI {csi:#x}", error_loc=47)
        if cmd.nsid >= NSID_ALL - 1:
            raise st.InvalidNamespace(f"NSID {cmd.nsid:#x}", error_loc=4)
        return Done(data=push_namespace_list(
            [n for n in ctrl.subsystem.namespaces if n > cmd.nsid]))
    if cns == IdentifyCns.NS_ID_DESCRIPTORS:
        ns = _check_nsid(ctrl, cmd.nsid)
        if ns is None:
            raise st.InvalidNamespace(f"namespace {cmd.nsid} is not active", error_loc=4)
        return Done(data=push_ns_id_descriptors(eui64=ns.eui64, nguid=ns.nguid, uuid=ns.uuid,
                                                csi=CSI_NVM))
    if cns in (IdentifyCns.NS_CSI, IdentifyCns.CTRL_CSI):
        if csi != CSI_NVM:
            raise st.InvalidField(f"CSI {csi:#x}", error_loc=47)
        if cns == IdentifyCns.NS_CSI:
            _check_nsid(ctrl, cmd.nsid)
        # NVM command set specific structures: all fields zero mean "no further limits"
        # (Linux then uses MDTS for Write Zeroes and 256 DSM ranges).
        return Done(data=bytes(IDENTIFY_DATA_SIZE))
    raise st.InvalidField(f"CNS {cns:#x}", error_loc=40)


# --- Get Log Page --------------------------------------------------------------------------------

def _smart(ctrl: Controller, nsid: int) -> bytes:
    if nsid in (0, NSID_ALL):
        c = ctrl.counters
    else:
        ns = _check_nsid(ctrl, nsid)
        if ns is None:
            raise st.InvalidNamespace(f"namespace {nsid} is not active", error_loc=4)
        c = ns.counters
    return push_smart_log(SmartLog(
        data_units_read=data_units(c.read_bytes), data_units_written=data_units(c.write_bytes),
        host_reads=c.reads, host_writes=c.writes, media_errors=ctrl.media_errors,
        num_err_log_entries=ctrl.error_count))


def log_page(session: QueueSession, ctrl: Controller, lid: int, nsid: int, csi: int,
             lsp: int = 0) -> bytes:
    """The whole log page ``lid`` as this controller shows it."""
    if lid == LogPageId.ERROR_INFORMATION:
        return push_error_log(ctrl.errors)
    if ctrl.is_discovery:
        if lid == LogPageId.DISCOVERY:
            return discovery.discovery_log(session, ctrl)
        raise st.InvalidLogPage(f"log page {lid:#x} on a discovery controller", error_loc=40)
    if lid == LogPageId.SMART_HEALTH:
        return _smart(ctrl, nsid)
    if lid == LogPageId.FIRMWARE_SLOT:
        return push_fw_slot_log(ctrl.subsystem.firmware)
    if lid == LogPageId.CHANGED_NAMESPACE_LIST:
        return push_changed_ns_list(ctrl.changed_nsids, ctrl.changed_overflow)
    if lid == LogPageId.COMMANDS_SUPPORTED:
        if csi != CSI_NVM:
            raise st.InvalidField(f"CSI {csi:#x}", error_loc=59)
        return push_effects_log(SUPPORTED_ADMIN_OPCODES, SUPPORTED_IO_OPCODES,
                                WRITING_IO_OPCODES)
    if lid == LogPageId.RESERVATION_NOTIFICATION:
        return push_notification_log(ctrl.next_reservation_notification())
    if lid == LogPageId.ANA:
        sub = ctrl.subsystem
        return push_ana_log(sub.ana_chgcnt, sub.ana_descriptors(ctrl.listener.portid),
                            groups_only=bool(lsp & ANA_LSP_RGO))
    raise st.InvalidLogPage(f"log page {lid:#x}", error_loc=40)


def _get_log_page(session: QueueSession, ctrl: Controller, cmd: Sqe, data: memoryview | None,
                  now: float) -> Done:
    lid = cmd.cdw10 & 0xFF
    lsp = (cmd.cdw10 >> 8) & 0x7F
    rae = bool(cmd.cdw10 & (1 << 15))
    numd = ((cmd.cdw11 & 0xFFFF) << 16 | cmd.cdw10 >> 16) + 1
    nbytes = numd * 4
    offset = cmd.cdw12 | cmd.cdw13 << 32
    csi = cmd.cdw14 >> 24
    if nbytes > ctrl.mdts_bytes:
        raise st.InvalidField(f"log page read of {nbytes} bytes exceeds MDTS", error_loc=42)
    _expect_length(cmd, nbytes)
    if offset & 3:
        raise st.InvalidField(f"log page offset {offset} is not dword aligned", error_loc=48)
    page = log_page(session, ctrl, lid, cmd.nsid, csi, lsp)
    if offset > len(page):
        raise st.InvalidField(f"log page offset {offset} beyond its {len(page)} bytes",
                              error_loc=48)
    ctrl.log_page_read(lid, rae)
    return Done(data=slice_log(page, offset, nbytes))


# --- Features ------------------------------------------------------------------------------------

_STORED_FEATURES = (FeatureId.ARBITRATION, FeatureId.POWER_MANAGEMENT, FeatureId.ERROR_RECOVERY,
                    FeatureId.INTERRUPT_COALESCING, FeatureId.WRITE_ATOMICITY)
_DISCOVERY_FEATURES = (FeatureId.KEEP_ALIVE_TIMER, FeatureId.ASYNC_EVENT_CONFIG)
_CHANGEABLE = 1 << 2  # Get Features SEL 011b capabilities: changeable


def _oaes(ctrl: Controller) -> int:
    return AEC_DISCOVERY_CHANGE if ctrl.is_discovery else IO_OAES


def _temperature_key(cdw11: int) -> tuple[int, int]:
    tmpsel = (cdw11 >> 16) & 0xF
    thsel = (cdw11 >> 20) & 0x3
    if thsel > 1 or (tmpsel > 8 and tmpsel != 0xF):
        raise st.InvalidField("temperature threshold selector", error_loc=44)
    return tmpsel, thsel


def _temperature_default(key: tuple[int, int]) -> int:
    return TEMPERATURE_OVER_DEFAULT_K if key[1] == 0 else 0


def _set_features(session: QueueSession, ctrl: Controller, cmd: Sqe, data: memoryview | None,
                  now: float) -> Done:
    fid = cmd.cdw10 & 0xFF
    value = cmd.cdw11
    if cmd.cdw10 >> 31:
        raise st.FeatureNotSaveable(f"feature {fid:#x} cannot be saved", error_loc=43)
    if ctrl.is_discovery and fid not in _DISCOVERY_FEATURES:
        raise st.InvalidField(f"feature {fid:#x} on a discovery controller", error_loc=40)
    if fid == FeatureId.NUMBER_OF_QUEUES:
        nsqr, ncqr = value & 0xFFFF, value >> 16
        if nsqr == 0xFFFF or ncqr == 0xFFFF:
            raise st.InvalidField("number of queues 65536", error_loc=44)
        if ctrl.io_queue_count:
            raise st.CommandSequenceError("number of queues set after I/O queues were created")
        granted = max(1, min(nsqr + 1, ncqr + 1, ctrl.subsystem.max_io_queues))
        ctrl.io_queues_allowed = granted
        return Done((granted - 1) | (granted - 1) << 16)
    if fid == FeatureId.ASYNC_EVENT_CONFIG:
        if value & ~(AEC_SMART_MASK | _oaes(ctrl)):
            raise st.InvalidField(f"asynchronous event configuration {value:#x}", error_loc=44)
        ctrl.aec = value
        return Done()
    if fid == FeatureId.KEEP_ALIVE_TIMER:
        ctrl.set_kato(value, now)
        return Done()
    if fid == FeatureId.VOLATILE_WRITE_CACHE:
        ctrl.write_cache = bool(value & 1)  # disabled: every write completes as FUA
        return Done()
    if fid == FeatureId.POWER_MANAGEMENT and value & 0x1F:
        raise st.InvalidField(f"power state {value & 0x1F} (only 0 exists)", error_loc=44)
    if fid in _STORED_FEATURES:
        ctrl.features[fid] = value
        return Done()
    if fid == FeatureId.TEMPERATURE_THRESHOLD:
        ctrl.temp_thresholds[_temperature_key(value)] = value & 0xFFFF
        return Done()
    if fid == HostFeatureId.HOST_IDENTIFIER:
        raise st.CommandSequenceError("on fabrics the host identifier comes with Connect")
    if fid == HostFeatureId.RESERVATION_PERSISTENCE:
        # PTPL changes with Reservation Register (CPTPL), which persists the change before it
        # completes; an admin command cannot wait for that here.
        raise st.FeatureNotChangeable("set PTPL with Reservation Register (CPTPL)",
                                      error_loc=40)
    raise st.InvalidField(f"feature {fid:#x}", error_loc=40)


def _feature_value(ctrl: Controller, fid: int, cdw11: int, default: bool) -> int:
    if fid == FeatureId.NUMBER_OF_QUEUES:
        n = (ctrl.subsystem.max_io_queues if default else ctrl.io_queues_allowed) - 1
        return n | n << 16
    if fid == FeatureId.ASYNC_EVENT_CONFIG:
        return 0 if default else ctrl.aec
    if fid == FeatureId.KEEP_ALIVE_TIMER:
        return ctrl.kato_ms
    if fid == FeatureId.VOLATILE_WRITE_CACHE:
        return 1 if default or ctrl.write_cache else 0
    if fid in _STORED_FEATURES:
        return 0 if default else ctrl.features.get(fid, 0)
    if fid == FeatureId.TEMPERATURE_THRESHOLD:
        key = _temperature_key(cdw11)
        return _temperature_default(key) if default else ctrl.temp_thresholds.get(
            key, _temperature_default(key))
    raise st.InvalidField(f"feature {fid:#x}", error_loc=40)


def _get_features(session: QueueSession, ctrl: Controller, cmd: Sqe, data: memoryview | None,
                  now: float) -> Done:
    fid = cmd.cdw10 & 0xFF
    sel = (cmd.cdw10 >> 8) & 0x7
    if ctrl.is_discovery and fid not in _DISCOVERY_FEATURES:
        raise st.InvalidField(f"feature {fid:#x} on a discovery controller", error_loc=40)
    if sel > 3:
        raise st.InvalidField(f"select {sel}", error_loc=41)
    if fid == HostFeatureId.HOST_IDENTIFIER:
        if not cmd.cdw11 & 1:  # EXHID: only the 128-bit host identifier exists on fabrics
            raise st.InvalidField("64-bit host identifier", error_loc=44)
        _expect_length(cmd, 16)
        return Done(data=ctrl.hostid)
    if fid == HostFeatureId.RESERVATION_PERSISTENCE:
        ns = _check_nsid(ctrl, cmd.nsid)
        if ns is None:
            raise st.InvalidNamespace(f"namespace {cmd.nsid} is not active", error_loc=4)
        if sel == 3:
            return Done(0)  # per namespace, not saveable, not changeable here
        return Done(1 if sel in (1, 2) or ns.reservations.ptpl else 0)
    value = _feature_value(ctrl, fid, cmd.cdw11, default=sel in (1, 2))  # nothing is saved
    if sel == 3:
        return Done(_CHANGEABLE)
    return Done(value)


# --- the rest ------------------------------------------------------------------------------------

def _keep_alive(session: QueueSession, ctrl: Controller, cmd: Sqe, data: memoryview | None,
                now: float) -> Done:
    ctrl.keep_alive(now)
    return Done()


def _async_event_request(session: QueueSession, ctrl: Controller, cmd: Sqe,
                         data: memoryview | None, now: float) -> Done | None:
    return ctrl.add_aer(cmd.cid)


def _abort(session: QueueSession, ctrl: Controller, cmd: Sqe, data: memoryview | None,
           now: float) -> Done:
    return Done(1)  # dword 0 bit 0 set: the command was not aborted


HANDLERS: dict[int, Handler] = {
    AdminOpcode.IDENTIFY: _identify,
    AdminOpcode.GET_LOG_PAGE: _get_log_page,
    AdminOpcode.SET_FEATURES: _set_features,
    AdminOpcode.GET_FEATURES: _get_features,
    AdminOpcode.KEEP_ALIVE: _keep_alive,
    AdminOpcode.ASYNC_EVENT_REQUEST: _async_event_request,
    AdminOpcode.ABORT: _abort,
}
DISCOVERY_HANDLERS: dict[int, Handler] = {
    op: HANDLERS[op] for op in (AdminOpcode.IDENTIFY, AdminOpcode.GET_LOG_PAGE,
                                AdminOpcode.SET_FEATURES, AdminOpcode.GET_FEATURES,
                                AdminOpcode.KEEP_ALIVE, AdminOpcode.ASYNC_EVENT_REQUEST)}


def execute(session: QueueSession, ctrl: Controller, cmd: Sqe, data: memoryview | None,
            now: float) -> Done | None:
    handler = (DISCOVERY_HANDLERS if ctrl.is_discovery else HANDLERS).get(cmd.opcode)
    if handler is None:
        raise st.InvalidOpcode(f"admin opcode {cmd.opcode:#x}", error_loc=0)
    return handler(session, ctrl, cmd, data, now)
