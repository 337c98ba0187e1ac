"""Per-tenant QoS: limits (token buckets) and weighted fair shares in front of a backend.

Modules: :mod:`~sbstore.qos.policy` (what a policy says), :mod:`~sbstore.qos.bucket` (token
buckets, pure), :mod:`~sbstore.qos.scheduler` (SFQ(D) across tenants, pure).
"""
