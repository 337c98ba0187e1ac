"""OpenSSL 3's libssl/libcrypto through ctypes: just what a TLS 1.3 external-PSK session over
memory BIOs needs.

Why ctypes: Python's ``ssl`` module gains TLS 1.3 external PSKs only in 3.13
(``SSLContext.set_psk_server_callback``), and the project runs on 3.11; the kernel here has no
kTLS either. OpenSSL 3.0 has everything (``SSL_CTX_set_psk_find_session_callback``,
``SSL_SESSION_set1_master_key``, memory BIOs), and libssl.so.3 ships with every Debian system.

Rules: the library is probed once at import. ``AVAILABLE`` says whether it was found and every
symbol resolved; ``UNAVAILABLE_REASON`` says why not. Nothing here raises at import, so a
target without libssl still serves plain NVMe/TCP; only a TLS listener fails, with that reason.
Names mirror OpenSSL's own, so its manual pages document each one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from ctypes import (
    CFUNCTYPE,
    POINTER,
    c_char_p,
    c_int,
    c_long,
    c_size_t,
    c_uint64,
    c_void_p,
)
from typing import Any

TLS1_3_VERSION = 0x0304
SSL_CTRL_SET_MIN_PROTO_VERSION = 123
SSL_CTRL_SET_MAX_PROTO_VERSION = 124
SSL_OP_NO_TICKET = 1 << 14

SSL_ERROR_NONE = 0
SSL_ERROR_SSL = 1
SSL_ERROR_WANT_READ = 2
SSL_ERROR_WANT_WRITE = 3
SSL_ERROR_SYSCALL = 5
SSL_ERROR_ZERO_RETURN = 6

# IANA cipher suite values (RFC 8446 §B.4), for SSL_CIPHER_find.
CIPHER_ID = {"TLS_AES_128_GCM_SHA256": b"\x13\x01", "TLS_AES_256_GCM_SHA384": b"\x13\x02"}

# int (*)(SSL *ssl, const unsigned char *identity, size_t identity_len, SSL_SESSION **sess)
PSK_FIND_SESSION_CB = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t, POINTER(c_void_p))
# int (*)(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
#         SSL_SESSION **sess)
PSK_USE_SESSION_CB = CFUNCTYPE(c_int, c_void_p, c_void_p, POINTER(c_void_p), POINTER(c_size_t),
                               POINTER(c_void_p))

# int (*)(SSL *s, int *al, void *arg)
CLIENT_HELLO_CB = CFUNCTYPE(c_int, c_void_p, POINTER(c_int), c_void_p)
SSL_CLIENT_HELLO_SUCCESS = 1
SSL_CLIENT_HELLO_ERROR = 0
TLSEXT_TYPE_PSK = 41  # pre_shared_key (RFC 8446 §4.2)

# (library, name, restype, argtypes)
_SIGNATURES: list[tuple[str, str, Any, list[Any]]] = [
    ("ssl", "TLS_method", c_void_p, []),
    ("ssl", "SSL_CTX_new", c_void_p, [c_void_p]),
    ("ssl", "SSL_CTX_free", None, [c_void_p]),
    ("ssl", "SSL_CTX_ctrl", c_long, [c_void_p, c_int, c_long, c_void_p]),
    ("ssl", "SSL_CTX_set_options", c_uint64, [c_void_p, c_uint64]),
    ("ssl", "SSL_CTX_set_num_tickets", c_int, [c_void_p, c_size_t]),
    ("ssl", "SSL_CTX_set_ciphersuites", c_int, [c_void_p, c_char_p]),
    ("ssl", "SSL_CTX_set_client_hello_cb", None, [c_void_p, CLIENT_HELLO_CB, c_void_p]),
    ("ssl", "SSL_client_hello_get0_ext", c_int,
     [c_void_p, ctypes.c_uint, POINTER(c_void_p), POINTER(c_size_t)]),
    ("ssl", "SSL_new", c_void_p, [c_void_p]),
    ("ssl", "SSL_set_ciphersuites", c_int, [c_void_p, c_char_p]),
    ("ssl", "SSL_free", None, [c_void_p]),
    ("ssl", "SSL_set_bio", None, [c_void_p, c_void_p, c_void_p]),
    ("ssl", "SSL_set_accept_state", None, [c_void_p]),
    ("ssl", "SSL_set_connect_state", None, [c_void_p]),
    ("ssl", "SSL_set_psk_find_session_callback", None, [c_void_p, PSK_FIND_SESSION_CB]),
    ("ssl", "SSL_set_psk_use_session_callback", None, [c_void_p, PSK_USE_SESSION_CB]),
    ("ssl", "SSL_do_handshake", c_int, [c_void_p]),
    ("ssl", "SSL_is_init_finished", c_int, [c_void_p]),
    ("ssl", "SSL_read_ex", c_int, [c_void_p, c_void_p, c_size_t, POINTER(c_size_t)]),
    ("ssl", "SSL_write_ex", c_int, [c_void_p, c_void_p, c_size_t, POINTER(c_size_t)]),
    ("ssl", "SSL_get_error", c_int, [c_void_p, c_int]),
    ("ssl", "SSL_shutdown", c_int, [c_void_p]),
    ("ssl", "SSL_get_current_cipher", c_void_p, [c_void_p]),
    ("ssl", "SSL_CIPHER_get_name", c_char_p, [c_void_p]),
    ("ssl", "SSL_CIPHER_find", c_void_p, [c_void_p, c_char_p]),
    ("ssl", "SSL_SESSION_new", c_void_p, []),
    ("ssl", "SSL_SESSION_free", None, [c_void_p]),
    ("ssl", "SSL_SESSION_set1_master_key", c_int, [c_void_p, c_char_p, c_size_t]),
    ("ssl", "SSL_SESSION_set_cipher", c_int, [c_void_p, c_void_p]),
    ("ssl", "SSL_SESSION_set_protocol_version", c_int, [c_void_p, c_int]),
    ("crypto", "BIO_s_mem", c_void_p, []),
    ("crypto", "BIO_new", c_void_p, [c_void_p]),
    ("crypto", "BIO_free", c_int, [c_void_p]),
    ("crypto", "BIO_write", c_int, [c_void_p, c_void_p, c_int]),
    ("crypto", "BIO_read", c_int, [c_void_p, c_void_p, c_int]),
    ("crypto", "BIO_ctrl_pending", c_size_t, [c_void_p]),
    ("crypto", "EVP_MD_get_size", c_int, [c_void_p]),
    ("crypto", "ERR_get_error", ctypes.c_ulong, []),
    ("crypto", "ERR_error_string_n", None, [ctypes.c_ulong, c_char_p, c_size_t]),
    ("crypto", "ERR_clear_error", None, []),
]


class _Lib:
    """The resolved functions, as attributes named like OpenSSL's."""

    def __getattr__(self, name: str) -> Any:  # only for names the probe did not set
        raise AttributeError(f"OpenSSL function {name} is not loaded ({UNAVAILABLE_REASON})")


lib = _Lib()
AVAILABLE = False
UNAVAILABLE_REASON = ""


def _probe() -> None:
    global AVAILABLE, UNAVAILABLE_REASON
    libs: dict[str, Any] = {}
    for short, soname in (("ssl", "libssl.so.3"), ("crypto", "libcrypto.so.3")):
        # The versioned soname first: the ABI below is OpenSSL 3's; find_library may name 1.1.
        for candidate in (soname, ctypes.util.find_library(short)):
            if not candidate:
                continue
            try:
                libs[short] = ctypes.CDLL(candidate)
                break
            except OSError:
                continue
        if short not in libs:
            UNAVAILABLE_REASON = f"{soname} (OpenSSL 3) not found"
            return
    for where, name, restype, argtypes in _SIGNATURES:
        try:
            fn = getattr(libs[where], name)
        except AttributeError:
            UNAVAILABLE_REASON = f"OpenSSL lacks {name} (OpenSSL 3.0 or later needed)"
            return
        fn.restype = restype
        fn.argtypes = argtypes
        setattr(lib, name, fn)
    AVAILABLE = True


_probe()


def last_error() -> str:
    """OpenSSL's queued errors as one line (and the queue emptied)."""
    messages = []
    buf = ctypes.create_string_buffer(256)
    for _ in range(16):  # bounded: the queue is short
        code = lib.ERR_get_error()
        if not code:
            break
        lib.ERR_error_string_n(code, buf, len(buf))
        messages.append(buf.value.decode(errors="replace"))
    return "; ".join(messages) or "no OpenSSL error queued"
