"""DH-HMAC-CHAP in-band authentication (NVMe Base 2.0 §8.13.5): the secrets (``secret``), the
finite-field Diffie-Hellman groups (``ffdhe``), the hash computations both sides make
(``chap``), and the controller's per-queue transaction (``responder``).

Rules: stdlib only (hashlib, hmac, int pow), no asyncio and no sockets. A secret never appears
in a repr, a log line or an exception message: :class:`secret.DhchapSecret` prints as its
transform hash and length only.
"""
