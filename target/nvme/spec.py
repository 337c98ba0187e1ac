"""NVMe constants the target and the host share: opcodes, status codes, feature and log ids.

Rules: values only (IntEnum and ints), no behaviour, stdlib only. Names follow the NVMe Base
Specification 2.0 and NVMe over Fabrics 1.1; the section is cited where a value is defined.
"""
from __future__ import annotations

from enum import IntEnum

DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"
NQN_FIELD_LEN = 256
SQE_SIZE = 64
CQE_SIZE = 16
NSID_ALL = 0xFFFFFFFF
CNTLID_DYNAMIC = 0xFFFF
CNTLID_STATIC_MAX = 0xFFEF  # controller ids 0xFFF0.. are reserved (Fabrics 1.1 §3.3)


class AdminOpcode(IntEnum):  # Base 2.0 §5, Figure 139
    DELETE_SQ = 0x00
    CREATE_SQ = 0x01
    GET_LOG_PAGE = 0x02
    DELETE_CQ = 0x04
    CREATE_CQ = 0x05
    IDENTIFY = 0x06
    ABORT = 0x08
    SET_FEATURES = 0x09
    GET_FEATURES = 0x0A
    ASYNC_EVENT_REQUEST = 0x0C
    KEEP_ALIVE = 0x18
    FABRICS = 0x7F


class IoOpcode(IntEnum):  # NVM Command Set 1.0 §3, Figure 15
    FLUSH = 0x00
    WRITE = 0x01
    READ = 0x02
    WRITE_UNCORRECTABLE = 0x04
    COMPARE = 0x05
    WRITE_ZEROES = 0x08
    DATASET_MANAGEMENT = 0x09
    RESERVATION_REGISTER = 0x0D  # Base 2.0 §7.3-7.6 (reservations)
    RESERVATION_REPORT = 0x0E
    RESERVATION_ACQUIRE = 0x11
    RESERVATION_RELEASE = 0x15
    FABRICS = 0x7F


class FabricsType(IntEnum):  # Fabrics 1.1 §3, Figure 12 (fctype, SQE byte 4)
    PROPERTY_SET = 0x00
    CONNECT = 0x01
    PROPERTY_GET = 0x04
    AUTH_SEND = 0x05
    AUTH_RECEIVE = 0x06
    DISCONNECT = 0x08


class StatusType(IntEnum):  # SCT, Base 2.0 §4.6.1.2
    GENERIC = 0x0
    COMMAND_SPECIFIC = 0x1
    MEDIA = 0x2
    PATH = 0x3
    VENDOR = 0x7


class GenericStatus(IntEnum):  # Base 2.0 Figure 102; NVM Command Set Figure 29 (0x80..)
    SUCCESS = 0x00
    INVALID_OPCODE = 0x01
    INVALID_FIELD = 0x02
    COMMAND_ID_CONFLICT = 0x03
    DATA_TRANSFER_ERROR = 0x04
    INTERNAL_ERROR = 0x06
    ABORT_REQUESTED = 0x07
    ABORT_SQ_DELETED = 0x08
    INVALID_NAMESPACE = 0x0B
    COMMAND_SEQUENCE_ERROR = 0x0C
    SGL_INVALID_LAST = 0x0D
    SGL_INVALID_COUNT = 0x0E
    SGL_DATA_LENGTH_INVALID = 0x0F
    SGL_METADATA_LENGTH_INVALID = 0x10
    SGL_TYPE_INVALID = 0x11
    SGL_OFFSET_INVALID = 0x16
    KEEP_ALIVE_EXPIRED = 0x1B
    HOST_ID_INCONSISTENT_FORMAT = 0x18  # Reservation Report without EDS, 128-bit host ids
    KEEP_ALIVE_INVALID = 0x1C
    TRANSIENT_TRANSPORT_ERROR = 0x22
    LBA_OUT_OF_RANGE = 0x80
    CAPACITY_EXCEEDED = 0x81
    NAMESPACE_NOT_READY = 0x82
    RESERVATION_CONFLICT = 0x83


class CommandSpecificStatus(IntEnum):  # Base 2.0 Figure 103; Fabrics 1.1 Figure 41 (Connect)
    INVALID_QUEUE_ID = 0x01
    INVALID_QUEUE_SIZE = 0x02
    ASYNC_EVENT_LIMIT_EXCEEDED = 0x05
    INVALID_LOG_PAGE = 0x09
    FEATURE_NOT_SAVEABLE = 0x0D
    FEATURE_NOT_CHANGEABLE = 0x0E
    CONNECT_INCOMPATIBLE_FORMAT = 0x80
    CONNECT_CONTROLLER_BUSY = 0x81
    CONNECT_INVALID_PARAMETERS = 0x82
    CONNECT_RESTART_DISCOVERY = 0x83
    CONNECT_INVALID_HOST = 0x84
    AUTH_REQUIRED = 0x91  # Base 2.0 Figure 103: the queue must authenticate first
    # Base 2.0: attribute-type errors for Dataset Management reuse 0x80.. in the NVM set.


class PathStatus(IntEnum):  # Base 2.0 Figure 105 (SCT 3h, path related)
    INTERNAL_PATH_ERROR = 0x00
    ANA_PERSISTENT_LOSS = 0x01
    ANA_INACCESSIBLE = 0x02
    ANA_TRANSITION = 0x03


class AnaState(IntEnum):  # Base 2.0 §8.1.3 and Figure 220 (ANA Group Descriptor, byte 16)
    OPTIMIZED = 0x01
    NON_OPTIMIZED = 0x02
    INACCESSIBLE = 0x03
    PERSISTENT_LOSS = 0x04
    CHANGE = 0x0F


class MediaStatus(IntEnum):  # Base 2.0 Figure 104
    WRITE_FAULT = 0x80
    UNRECOVERED_READ_ERROR = 0x81


class FeatureId(IntEnum):  # Base 2.0 Figure 316
    ARBITRATION = 0x01
    POWER_MANAGEMENT = 0x02
    TEMPERATURE_THRESHOLD = 0x04
    ERROR_RECOVERY = 0x05
    VOLATILE_WRITE_CACHE = 0x06
    NUMBER_OF_QUEUES = 0x07
    INTERRUPT_COALESCING = 0x08
    WRITE_ATOMICITY = 0x0A
    ASYNC_EVENT_CONFIG = 0x0B
    KEEP_ALIVE_TIMER = 0x0F
    HOST_BEHAVIOR = 0x16


class LogPageId(IntEnum):  # Base 2.0 Figure 202
    ERROR_INFORMATION = 0x01
    SMART_HEALTH = 0x02
    FIRMWARE_SLOT = 0x03
    CHANGED_NAMESPACE_LIST = 0x04
    COMMANDS_SUPPORTED = 0x05
    ANA = 0x0C  # Asymmetric Namespace Access, Base 2.0 §5.16.1.12
    RESERVATION_NOTIFICATION = 0x80  # Base 2.0 §5.16.1.24
    DISCOVERY = 0x70


class IdentifyCns(IntEnum):  # Base 2.0 Figure 273
    NAMESPACE = 0x00
    CONTROLLER = 0x01
    ACTIVE_NAMESPACE_LIST = 0x02
    NS_ID_DESCRIPTORS = 0x03
    NS_CSI = 0x05
    CTRL_CSI = 0x06
    ACTIVE_NS_LIST_CSI = 0x07


class NsIdDescriptorType(IntEnum):  # Base 2.0 Figure 276
    EUI64 = 0x1
    NGUID = 0x2
    UUID = 0x3
    CSI = 0x4


class Property(IntEnum):  # controller registers as fabrics properties, Base 2.0 §3.1.3
    CAP = 0x00
    VS = 0x08
    CC = 0x14
    CSTS = 0x1C
    NSSR = 0x20


class AsyncEventType(IntEnum):  # Base 2.0 Figure 150
    ERROR = 0x0
    SMART_HEALTH = 0x1
    NOTICE = 0x2
    IO_COMMAND_SET = 0x6


class AsyncEventNotice(IntEnum):  # AEI for type NOTICE
    NAMESPACE_ATTRIBUTE_CHANGED = 0x00
    FIRMWARE_ACTIVATION_STARTING = 0x01
    ANA_CHANGE = 0x03
    DISCOVERY_LOG_CHANGED = 0xF0


class AsyncEventIoCommandSet(IntEnum):  # AEI for type IO_COMMAND_SET (Base 2.0 Figure 150)
    RESERVATION_LOG_AVAILABLE = 0x00


class ReservationNotice(IntEnum):  # Reservation Notification log page type (Base 2.0 Fig. 238)
    EMPTY = 0
    REGISTRATION_PREEMPTED = 1
    RESERVATION_RELEASED = 2
    RESERVATION_PREEMPTED = 3


# SGL descriptor identifiers (last byte of DPTR: type << 4 | subtype), Base 2.0 Figure 116/117.
SGL_DATA_BLOCK_OFFSET = 0x01  # in-capsule data (Data Block, subtype Offset)
SGL_TRANSPORT_DATA_BLOCK = 0x5A  # data moved by the transport (R2T/H2CData, C2HData)

# CC/CSTS fields (Base 2.0 §3.1.3.5 and §3.1.3.6).
CC_EN = 1 << 0
CC_SHN_SHIFT, CC_SHN_MASK = 14, 0x3
CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1
CSTS_SHST_SHIFT = 2
SHST_NORMAL, SHST_OCCURRING, SHST_COMPLETE = 0, 1, 2

# Controller types in Identify Controller CNTRLTYPE (byte 111).
CNTRLTYPE_IO, CNTRLTYPE_DISCOVERY, CNTRLTYPE_ADMIN = 1, 2, 3

# --- Added for the controller side (target/controller.py and friends) -----------------------

NQN_MAX_LEN = 223  # NVMF_NQN_SIZE: the longest NQN, in bytes (Base 2.0 §4.5)
NVME_VS_1_3 = 0x00010300  # VS register / Identify VER: major << 16 | minor << 8
CSI_NVM = 0x00  # Command Set Identifier of the NVM command set (Base 2.0 Figure 285)
IDENTIFY_DATA_SIZE = 4096
CONNECT_DATA_SIZE = 1024  # Fabrics 1.1 Figure 20
DISCOVERY_LOG_HEADER_SIZE = 1024  # Base 2.0 Figure 264
DISCOVERY_LOG_ENTRY_SIZE = 1024

# Connect command CATTR (Fabrics 1.1 Figure 19) and its response (Figure 21).
CONNECT_CATTR_DISABLE_SQFLOW = 1 << 2
SQHD_DISABLED = 0xFFFF  # SQHD of the Connect response when SQ flow control is disabled
CNTLID_ANY_STATIC = 0xFFFE  # Connect data cntlid: "any static controller" (Fabrics 1.1 §3.3)
# Connect Invalid Parameters: dword 0 of the completion names the bad field (Fabrics 1.1
# Figure 22): IPO (byte offset) in bits 15:0, IATTR bit 16 = 1 when the offset is in the data.
CONNECT_IATTR_DATA = 1 << 16
# Connect response dword 0 (Base 2.0 Figure 547): AUTHREQ bits 18:17. ATR: authentication
# transaction required (DH-HMAC-CHAP before any other command); ASCR: with secure channel.
CONNECT_AUTHREQ_ATR = 1 << 17
CONNECT_AUTHREQ_ASCR = 1 << 18
CONNECT_SQE_OFFSET_RECFMT, CONNECT_SQE_OFFSET_QID = 40, 42
CONNECT_SQE_OFFSET_SQSIZE, CONNECT_SQE_OFFSET_CATTR, CONNECT_SQE_OFFSET_KATO = 44, 46, 48
CONNECT_DATA_OFFSET_CNTLID, CONNECT_DATA_OFFSET_SUBNQN, CONNECT_DATA_OFFSET_HOSTNQN = 16, 256, 512


class HostFeatureId(IntEnum):  # Base 2.0 Figure 316, features beyond FeatureId
    AUTONOMOUS_POWER_STATE = 0x0C
    TIMESTAMP = 0x0E
    HOST_IDENTIFIER = 0x81
    RESERVATION_PERSISTENCE = 0x83  # per namespace: bit 0 PTPL


# Asynchronous Event Configuration (feature 0x0B, cdw11) and Identify OAES bits.
AEC_SMART_MASK = 0xFF
AEC_NS_ATTRIBUTE = 1 << 8
AEC_FW_ACTIVATION = 1 << 9
AEC_ANA_CHANGE = 1 << 11
AEC_DISCOVERY_CHANGE = 1 << 31

# CC fields beyond EN/SHN (Base 2.0 §3.1.3.5).
CC_CSS_SHIFT, CC_CSS_MASK = 4, 0x7
CC_MPS_SHIFT, CC_MPS_MASK = 7, 0xF
CC_AMS_SHIFT, CC_AMS_MASK = 11, 0x7
CC_IOSQES_SHIFT, CC_IOCQES_SHIFT, CC_QES_MASK = 16, 20, 0xF
IOSQES, IOCQES = 6, 4  # log2 of the SQE (64 bytes) and CQE (16 bytes) sizes

# CAP fields (Base 2.0 §3.1.3.1).
CAP_CQR = 1 << 16
CAP_TO_SHIFT = 24  # timeout in 500 ms units, bits 31:24
CAP_CSS_NVM = 1 << 37
CAP_MPSMIN_SHIFT, CAP_MPSMAX_SHIFT = 48, 52

# Identify Controller bits (Base 2.0 Figure 275).
CMIC_MULTI_CTRL = 1 << 1
CMIC_ANA = 1 << 3  # Asymmetric Namespace Access reporting
# ANACAP: which ANA states the controller reports (bits 0-4), and bit 6: a namespace's
# ANAGRPID does not change while it is attached (Base 2.0 Figure 275).
ANACAP_OPTIMIZED = 1 << 0
ANACAP_NON_OPTIMIZED = 1 << 1
ANACAP_INACCESSIBLE = 1 << 2
ANACAP_PERSISTENT_LOSS = 1 << 3
ANACAP_CHANGE = 1 << 4
ANACAP_GRPID_STATIC = 1 << 6
ANA_LSP_RGO = 1 << 0  # Get Log Page ANA, LSP bit 0: Return Groups Only (no NSID lists)
CTRATT_HOST_ID_128 = 1 << 0
CTRATT_TBKAS = 1 << 6  # traffic based keep alive
ONCS_DSM = 1 << 2
ONCS_WRITE_ZEROES = 1 << 3
ONCS_RESERVATIONS = 1 << 5
VWC_PRESENT = 1 << 0
VWC_FLUSH_NSID_ALL = 0x3 << 1  # Flush with NSID FFFFFFFFh is supported
LPA_SMART_PER_NS = 1 << 0
LPA_CMD_EFFECTS = 1 << 1
LPA_EXTENDED = 1 << 2
SGLS_SUPPORTED = 1 << 0  # SGLs supported, no alignment requirement
SGLS_OFFSET = 1 << 20  # SGL Data Block descriptors may carry an offset (in-capsule data)
OFCS_DISCONNECT = 1 << 0

# Identify Namespace bits (NVM Command Set 1.0 Figure 97).
NSFEAT_THIN_PROVISIONING = 1 << 0
DLFEAT_READ_ZEROES = 0x1  # deallocated blocks read as zeroes
DLFEAT_WRITE_ZEROES_DEAC = 1 << 3  # Write Zeroes supports the Deallocate bit
NMIC_SHARED = 1 << 0
# RESCAP (NVM Command Set Figure 97, byte 31): persist through power loss (bit 0), the six
# reservation types (bits 1-6), and bit 7: Ignore Existing Key behaves as in NVMe 1.3 and later.
RESCAP_ALL = 0xFF


class ReservationType(IntEnum):  # Base 2.0 Figure 489 (RTYPE)
    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 2
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 3
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 4
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 5
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 6


class RegisterAction(IntEnum):  # Reservation Register cdw10 bits 2:0 (RREGA)
    REGISTER = 0
    UNREGISTER = 1
    REPLACE = 2


class AcquireAction(IntEnum):  # Reservation Acquire cdw10 bits 2:0 (RACQA)
    ACQUIRE = 0
    PREEMPT = 1
    PREEMPT_AND_ABORT = 2


class ReleaseAction(IntEnum):  # Reservation Release cdw10 bits 2:0 (RRELA)
    RELEASE = 0
    CLEAR = 1


RESV_IEKEY = 1 << 3  # cdw10 bit 3 of Register, Acquire and Release: Ignore Existing Key
RESV_CPTPL_SHIFT = 30  # Register cdw10 bits 31:30: change persist through power loss state
CPTPL_NO_CHANGE, CPTPL_CLEAR, CPTPL_SET = 0, 2, 3
RESV_REPORT_EDS = 1 << 0  # Report cdw11 bit 0: extended data structure (128-bit host ids)

# NVM command fields (NVM Command Set 1.0 §3).
RW_FUA = 1 << 30  # cdw12
WRITE_ZEROES_DEAC = 1 << 25  # cdw12
DSM_ATTR_DEALLOCATE = 1 << 2  # cdw11
DSM_RANGE_SIZE = 16
DSM_MAX_RANGES = 256

# SQE flags byte: FUSE bits 1:0, PSDT bits 7:6 (01 = SGL, the only form fabrics allows).
SQE_FLAGS_FUSE_MASK = 0x03
SQE_FLAGS_PSDT_MASK = 0xC0
SQE_FLAGS_PSDT_SGL = 0x40

# Discovery log page entry fields (Base 2.0 Figure 265).
TRTYPE_TCP = 3
ADRFAM_IPV4, ADRFAM_IPV6 = 1, 2
SUBTYPE_DISCOVERY_REFERRAL, SUBTYPE_NVME, SUBTYPE_CURRENT_DISCOVERY = 1, 2, 3
TREQ_NOT_SPECIFIED = 0x0
TREQ_REQUIRED = 0x1  # secure channel (TLS) required (bits 1:0)
TREQ_NOT_REQUIRED = 0x2  # secure channel offered, not required
TREQ_DISABLE_SQFLOW = 1 << 2  # the host may disable SQ flow control
TCP_SECTYPE_NONE = 0
TCP_SECTYPE_TLS13 = 2  # TSAS for TCP (Linux NVMF_TCP_SECTYPE_TLS13)
