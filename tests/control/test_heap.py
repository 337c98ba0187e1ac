"""The daemon's heap settings (sbstore.heap): large buffers freed between bursts of I/O stay
with the process, instead of going back to the kernel and faulting in again, zeroed, at the
next burst. Each case runs in a fresh interpreter: the settings are process-wide."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Bursts as the RAM device's 128k reads at QD16 make them: 16 buffers of 128 KiB, then all
# dropped. Prints the page faults the last 100 bursts took.
BURSTS = """
import resource, sys
sys.path.insert(0, {root!r})
if {tune}:
    from sbstore.heap import keep_freed_memory
    assert keep_freed_memory()
def burst():
    bufs = [bytearray(128 << 10) for _ in range(16)]
    for b in bufs:
        b[::4096] = b"x" * 32  # touch every page, as a read's data does
    del bufs
for _ in range(20):
    burst()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    burst()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(tune: bool, env: dict[str, str] | None = None) -> int:
    out = subprocess.run([sys.executable, "-c", BURSTS.format(root=ROOT, tune=tune)],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_buffers_are_reused_without_page_faults() -> None:
    untuned = faults(False)
    tuned = faults(True)
    # 100 bursts of 16 x 32 pages: the defaults fault most of them in again every time.
    assert untuned > 10_000, untuned
    assert tuned < 500, tuned


def test_an_operator_setting_in_the_environment_is_left_alone() -> None:
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="131072")
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); from sbstore.heap import "
            f"keep_freed_memory; print(keep_freed_memory())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
