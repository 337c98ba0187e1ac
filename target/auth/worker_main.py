"""The child process that runs DH-HMAC-CHAP's modular exponentiations for the target
(``python3 -m target.auth.worker_main``; started and stopped by :mod:`target.offload`).

Why a process: CPython's ``pow()`` on big integers holds the GIL for its whole run (about
7 ms for ffdhe2048 and 70 ms for ffdhe8192 here), so a worker *thread* stalls the event loop
just as long as running it inline does. A child process computes while the loop serves.

Protocol on stdin/stdout, one request at a time: a 4-byte little-endian length, then a pickle
of ``(function, args)``; the answer is the same framing around ``(True, result)`` or
``(False, "ExceptionName: message")``. Only the parent writes to stdin, and it only sends
functions of ``target.auth.ffdhe``: the child refuses any other module. The loop ends when
stdin closes (the parent closed it, or died).
"""
from __future__ import annotations

import pickle
import struct
import sys
from typing import Any, BinaryIO

ALLOWED_MODULE = "target.auth.ffdhe"
_LEN = struct.Struct("<I")
MAX_MESSAGE = 1 << 20  # a request is a few KiB; anything larger is a broken pipe


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    data = stream.read(n)
    return data if data is not None and len(data) == n else None


def serve(rx: BinaryIO, tx: BinaryIO) -> None:
    while True:  # one request per iteration; ends at EOF (the parent's lifetime bounds it)
        head = _read_exact(rx, _LEN.size)
        if head is None:
            return
        (n,) = _LEN.unpack(head)
        if n > MAX_MESSAGE:
            return
        body = _read_exact(rx, n)
        if body is None:
            return
        fn, args = pickle.loads(body)  # noqa: S301 - our parent is the only writer
        answer: tuple[bool, Any]
        if getattr(fn, "__module__", None) != ALLOWED_MODULE:
            answer = (False, f"TypeError: {fn!r} is not a function of {ALLOWED_MODULE}")
        else:
            try:
                answer = (True, fn(*args))
            except Exception as e:  # noqa: BLE001 - reported to the parent
                answer = (False, f"{type(e).__name__}: {e}")
        out = pickle.dumps(answer)
        tx.write(_LEN.pack(len(out)) + out)
        tx.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
