"""The hash computations of DH-HMAC-CHAP, the same on both sides (Base 2.0 §8.13.5.4-5;
byte order as Linux drivers/nvme/host/auth.c and target/auth.c compute them):

    R1 = HMAC(Kh', Ca1 || S1 || T_ID || SC_C || "HostHost" || NQNh || 00h || NQNc)
    R2 = HMAC(Kc', Ca2 || S2 || T_ID || SC_C || "Controller" || NQNc || 00h || NQNh)

Kh' / Kc' are the transformed host / controller secrets (``DhchapSecret.transformed`` with
NQNh / NQNc), S1/S2 u32 and T_ID u16 little-endian, SC_C one byte (0). With a DH group the
challenge is augmented with the session key Ks: Ca = HMAC(H(Ks), C); with the null group
Ca = C.
"""
from __future__ import annotations

import hashlib
import hmac
import struct

from target.nvme.dhchap import HASH_NAME, HashId

_S_TID_SCC = struct.Struct("<IHB")


def digest_name(hash_id: int) -> str:
    return HASH_NAME[HashId(hash_id)]


def augmented_challenge(hash_id: int, challenge: bytes, session_key: bytes | None) -> bytes:
    if session_key is None:
        return challenge
    name = digest_name(hash_id)
    return hmac.new(hashlib.new(name, session_key).digest(), challenge, name).digest()


def _response(hash_id: int, key: bytes, challenge: bytes, seqnum: int, t_id: int,
              label: bytes, first_nqn: str, second_nqn: str,
              session_key: bytes | None) -> bytes:
    name = digest_name(hash_id)
    mac = hmac.new(key, augmented_challenge(hash_id, challenge, session_key), name)
    mac.update(_S_TID_SCC.pack(seqnum, t_id, 0))
    mac.update(label + first_nqn.encode() + b"\0" + second_nqn.encode())
    return mac.digest()


def host_response(hash_id: int, host_key: bytes, c1: bytes, s1: int, t_id: int, hostnqn: str,
                  subnqn: str, session_key: bytes | None = None) -> bytes:
    """R1, which the host sends in Reply and the controller checks."""
    return _response(hash_id, host_key, c1, s1, t_id, b"HostHost", hostnqn, subnqn,
                     session_key)


def controller_response(hash_id: int, ctrl_key: bytes, c2: bytes, s2: int, t_id: int,
                        subnqn: str, hostnqn: str, session_key: bytes | None = None) -> bytes:
    """R2, which the controller sends in Success1 and the host checks."""
    return _response(hash_id, ctrl_key, c2, s2, t_id, b"Controller", subnqn, hostnqn,
                     session_key)
