"""Tests that drive the real Linux NVMe/TCP host (kernel nvme-tcp, nvme-cli, fio) in a QEMU guest."""
