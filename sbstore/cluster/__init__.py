"""Cluster mode: several sbstore nodes share desired state in etcd and keep replicated volumes
(docs/cluster.md). Nothing here runs unless the config has a ``[cluster]`` section."""
