"""Fixtures for the linux-host tests: the guest image, a booted guest, the sbstore demo target.

- ``linux_host_image`` (session): the kernel + initramfs, built once and cached on disk
  (see :mod:`.vm`). Missing tools are apt-installed when running as root; otherwise the test
  fails with the list of packages. These tests are never skipped.
- ``linux_host`` (module): one booted :class:`LinuxHostVM`, powered off (killed if need be)
  after the module's last test.
- ``linux_host_612_image`` (session) / ``linux_host_612`` (module): the same with Debian 13's
  6.12 cloud kernel (NVMe in-band authentication, TLS, multipath), for the tests that need
  them; everything else keeps running on 6.1.
- ``sbstore_demo`` (module, once per data I/O engine: io_uring, threads, buffered):
  ``python3 -m sbstore serve --demo --io ENGINE`` on a free 127.0.0.1 port, reachable from the
  guest at 10.0.2.2:PORT; SIGTERM then SIGKILL after the module.
- On a failed test, every fixture value with ``failure_sections()`` (the guest: console, dmesg,
  QEMU log; the server: its output) adds its sections to the report.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from .sbstore_process import SbstoreServer
from .vm import KERNEL_6_12, GuestImage, LinuxHostVM, VMError, build_image


@pytest.fixture(scope="session")
def linux_host_image() -> GuestImage:
    try:
        return build_image(log=sys.stderr)
    except VMError as exc:
        pytest.fail(f"cannot build the linux-host guest image: {exc}", pytrace=False)


BOOT_ATTEMPTS = 2


def booted_guest(image: GuestImage, what: str) -> Iterator[LinuxHostVM]:
    """A guest of ``image`` booted for the fixture's scope (``what`` names it on failure).

    A boot that fails is tried once more: under TCG a guest has been seen to lose its command
    channel while booting (once, in a CI run of some twenty boots, on a loaded machine), before
    any test ran; the first failure is printed, so it stays visible."""
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        vm = LinuxHostVM(image)
        try:
            vm.start()
            break
        except VMError as exc:
            vm.stop(graceful=False)
            if attempt == BOOT_ATTEMPTS:
                pytest.fail(f"cannot boot the {what} ({attempt} attempts): {exc}",
                            pytrace=False)
            print(f"booting the {what} failed (attempt {attempt}), booting again: {exc}")
    try:
        yield vm
    finally:
        vm.stop()


@pytest.fixture(scope="module")
def linux_host(linux_host_image: GuestImage) -> Iterator[LinuxHostVM]:
    yield from booted_guest(linux_host_image, "linux-host guest")


@pytest.fixture(scope="session")
def linux_host_612_image() -> GuestImage:
    try:
        return build_image(log=sys.stderr, kernel=KERNEL_6_12)
    except VMError as exc:
        pytest.fail(f"cannot build the 6.12 linux-host guest image: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def linux_host_612(linux_host_612_image: GuestImage) -> Iterator[LinuxHostVM]:
    yield from booted_guest(linux_host_612_image, "6.12 linux-host guest")


@pytest.fixture(scope="module", params=["6.1", "6.12"])
def guest(request: pytest.FixtureRequest) -> Iterator[LinuxHostVM]:
    """A guest of each kernel in turn (module scope, so one boot per kernel): for tests that
    must hold on the host most hypervisors run today and on the newer one."""
    image_fixture = {"6.1": "linux_host_image", "6.12": "linux_host_612_image"}[request.param]
    image: GuestImage = request.getfixturevalue(image_fixture)
    yield from booted_guest(image, f"{request.param} linux-host guest")


@pytest.fixture(scope="module", params=["io_uring", "threads", "buffered"])
def sbstore_demo(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[SbstoreServer]:
    # Every data I/O engine serves the whole conformance suite (the guest is shared).
    engine = request.param
    server = SbstoreServer(tmp_path_factory.mktemp(f"sbstore-state-{engine}"),
                           extra_args=("--io", engine))
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        output = server.output()
        server.stop()
        pytest.fail(f"sbstore serve --demo did not come up: {exc}\n--- server output ---\n"
                    f"{output}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    seen: set[int] = set()
    funcargs = getattr(item, "funcargs", {})
    for name in getattr(item, "fixturenames", ()):
        value = funcargs.get(name)
        if value is None or id(value) in seen or not hasattr(value, "failure_sections"):
            continue
        seen.add(id(value))
        try:
            sections = value.failure_sections()
        except Exception as exc:  # a report must not hide the failure it explains
            sections = [(f"{name}: no failure details", repr(exc))]
        for title, text in sections:
            report.sections.append((title, text))
