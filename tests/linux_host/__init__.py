"""Tests that drive the real Linux NVMe/TCP host (nvme-tcp, nvme-cli, fio) in a QEMU guest."""
