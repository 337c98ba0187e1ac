"""NVMe/TCP over TLS 1.3 with a pre-shared key (TP 8011).

- :mod:`target.tls.psk`: the PSK interchange format, derivations and identities (stdlib only).
- :mod:`target.tls.openssl`: OpenSSL 3 through ctypes, probed at import (``AVAILABLE``).
- :mod:`target.tls.engine`: one TLS 1.3 PSK session over memory buffers (sans-I/O).
- :mod:`target.tls.keyring`: the target's PSKs per host, from a file only root can read.
"""
