"""An NVMe/TCP initiator in Python: for tests, the load generator, and users.

    from target.host import Controller, discover
"""
from target.host.auth import AuthenticationFailed, HostAuth
from target.host.controller import Controller
from target.host.discovery import discover
from target.host.queue_client import CommandFailed, Completion, QueueClient

__all__ = ["AuthenticationFailed", "Controller", "discover", "CommandFailed", "Completion",
           "HostAuth", "QueueClient"]
