"""NVMe/TCP transport, sans-I/O: PDU codec (``pdu``), CRC32C digests (``digest``), and the two
queue roles, :class:`TargetQueue` (controller) and :class:`HostQueue` (initiator).

Imports only the standard library and ``target.nvme``; no asyncio, no sockets, no clock.
"""
from target.tcp.events import (
                               CommandReceived,
                               Established,
                               PeerTerminated,
                               ProtocolFailed,
                               QueueEstablished,
                               ResponseReceived,
)
from target.tcp.host import HostQueue
from target.tcp.pdu import TransportError
from target.tcp.queue import TargetQueue

__all__ = [
                               "CommandReceived",
                               "Established",
                               "HostQueue",
                               "PeerTerminated",
                               "ProtocolFailed",
                               "QueueEstablished",
                               "ResponseReceived",
                               "TargetQueue",
                               "TransportError",
]
