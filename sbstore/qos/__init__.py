"""Per-tenant QoS: limits (token buckets) and weighted fair shares in front of a backend.

Modules:
- :mod:`~sbstore.qos.policy`: what a policy says (the control module's field names).
- :mod:`~sbstore.qos.bucket`: token buckets with debt and burst (pure, ``now`` passed in).
- :mod:`~sbstore.qos.scheduler`: start-time fair queueing across tenants, per-volume and
  per-kind queues, limits gating dispatch (pure).
- :mod:`~sbstore.qos.device`: :class:`QosDevice` (a ``target.blockdev.BlockDevice``), the
  per-backend dispatcher with its bound on outstanding I/Os, and :class:`QosManager`, what the
  daemon drives.

Dependencies (DESIGN.md): ``target.blockdev`` and the standard library only.
"""
from sbstore.qos.device import (
    DEFAULT_BACKEND,
    DEFAULT_MAX_OUTSTANDING,
    DEFAULT_TENANT,
    Backend,
    QosDevice,
    QosManager,
)
from sbstore.qos.policy import Limits, limits_of, weight_of
from sbstore.qos.scheduler import DEFAULT_COST_BYTES, Scheduler, TenantQosStats

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_COST_BYTES",
    "DEFAULT_MAX_OUTSTANDING",
    "DEFAULT_TENANT",
    "Backend",
    "Limits",
    "QosDevice",
    "QosManager",
    "Scheduler",
    "TenantQosStats",
    "limits_of",
    "weight_of",
]
