"""QoS policies as the QoS layer reads them: limits (a tenant's or a volume's) and a weight.

Rules of this module:
- The field names are the control module's (``sbstore.config.QosPolicy``): ``iops``,
  ``read_iops``, ``write_iops``, ``bps``, ``read_bps``, ``write_bps`` (0 = no limit; bps in
  bytes/s), ``burst_s`` (the allowance each bucket holds, in seconds of its rate) and ``weight``
  (1..1000, a tenant's share when tenants compete for the backend).
- :func:`limits_of` and :func:`weight_of` accept that class, any object with those attributes,
  a mapping, or None (no limits, weight 100), so ``sbstore.qos`` imports nothing from the
  control side (DESIGN.md: qos imports ``target.blockdev`` only). A mapping with an unknown key
  is refused, not ignored (SPDK SMA's rule: a limit silently dropped is a limit not enforced).
- Pure: no clock, no I/O.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LIMIT_FIELDS = ("iops", "read_iops", "write_iops", "bps", "read_bps", "write_bps")
POLICY_FIELDS = (*LIMIT_FIELDS, "burst_s", "weight")
DEFAULT_BURST_S = 1.0
DEFAULT_WEIGHT = 100
MIN_WEIGHT, MAX_WEIGHT = 1, 1000


@dataclass(frozen=True, slots=True)
class Limits:
    """Rates a tenant or a volume may not exceed (0: no limit) and its burst allowance."""

    iops: int = 0
    read_iops: int = 0
    write_iops: int = 0
    bps: int = 0
    read_bps: int = 0
    write_bps: int = 0
    burst_s: float = DEFAULT_BURST_S

    def __post_init__(self) -> None:
        for name in LIMIT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0: no limit), not {value!r}")
        b = self.burst_s
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
            raise ValueError(f"burst_s must be a number of seconds >= 0, not {b!r}")

    @property
    def unlimited(self) -> bool:
        return not (self.iops or self.read_iops or self.write_iops or self.bps or self.read_bps
                    or self.write_bps)


NO_LIMITS = Limits()


def _get(policy: Any, name: str, default: Any) -> Any:
    if isinstance(policy, Mapping):
        return policy.get(name, default)
    return getattr(policy, name, default)


def _check_keys(policy: Any) -> None:
    if isinstance(policy, Mapping):
        unknown = set(policy) - set(POLICY_FIELDS)
        if unknown:
            raise ValueError(f"unknown QoS policy field {min(map(str, unknown))!r} "
                             f"(fields: {', '.join(POLICY_FIELDS)})")


def limits_of(policy: Any) -> Limits:
    """The :class:`Limits` of a policy object, a mapping, or None (no limits)."""
    if policy is None:
        return NO_LIMITS
    if isinstance(policy, Limits):
        return policy
    _check_keys(policy)
    return Limits(**{name: _get(policy, name, 0) for name in LIMIT_FIELDS},
                  burst_s=_get(policy, "burst_s", DEFAULT_BURST_S))


def weight_of(policy: Any) -> int:
    """A tenant's weight from its policy (None or no ``weight``: the default, 100)."""
    if policy is None:
        return DEFAULT_WEIGHT
    _check_keys(policy)
    w = _get(policy, "weight", DEFAULT_WEIGHT)
    if isinstance(w, bool) or not isinstance(w, int) or not MIN_WEIGHT <= w <= MAX_WEIGHT:
        raise ValueError(f"weight must be an integer from {MIN_WEIGHT} to {MAX_WEIGHT}, "
                         f"not {w!r}")
    return w
