"""What the SIGKILL crash tests share: run a child that prints READY, then a line per step it
takes, let it live a while, kill it, and read what it said."""
from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_until_killed(module: str, args: Sequence[str], lifetime: float) -> list[str]:
    """``python -m module args...``, SIGKILLed ``lifetime`` seconds after its READY line; the
    lines it printed after READY (the last piece, empty or cut short by the kill, dropped)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0)  # no read-ahead past READY
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        assert sel.select(timeout=30), "the child did not start"
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first == b"READY\n", first + proc.stderr.read()  # type: ignore[union-attr]
        time.sleep(lifetime)
        proc.kill()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -9, err.decode()[-2000:]
    return out.decode().split("\n")[:-1]
