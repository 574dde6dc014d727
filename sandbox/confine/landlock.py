"""Landlock, through its three system calls: TCP ports and scopes only.

Landlock rules are port numbers, not addresses: the app may connect to the
egress proxy's port on any address. Where the app has no route but loopback
(an enclave, an internal network), that is the egress proxy.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass

# The numbers are shared by every architecture with the generic syscall table
# and by x86_64 alike.
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_SUPPORTED_MACHINES = frozenset({"x86_64", "aarch64"})

_CREATE_RULESET_VERSION = 1 << 0
_RULE_NET_PORT = 2
ACCESS_NET_BIND_TCP = 1 << 0
ACCESS_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
_SCOPE_SIGNAL = 1 << 1

# The first ABI with network rules, and the first with scopes.
NET_ABI = 4
SCOPE_ABI = 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


@dataclass(frozen=True, slots=True)
class NetworkRules:
    connect_ports: frozenset[int]
    bind_ports: frozenset[int]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is unavailable."""
    if platform.machine() not in _SUPPORTED_MACHINES:
        return 0
    version = _libc.syscall(
        ctypes.c_long(_SYS_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_CREATE_RULESET_VERSION),
    )
    return max(int(version), 0)


def restrict_self(rules: NetworkRules, abi: int) -> None:
    """Confine this process and everything it executes from now on.

    Needs ``no_new_privs`` (or CAP_SYS_ADMIN). Raises OSError naming the
    step that failed; the process is then not confined and must not go on.
    """
    if abi < NET_ABI:
        raise OSError(f"Landlock network rules need ABI {NET_ABI}, kernel has {abi}")
    attr = _RulesetAttr(
        handled_access_fs=0,
        handled_access_net=ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP,
        scoped=_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= SCOPE_ABI else 0,
    )
    # Older kernels refuse a larger struct than they know.
    size = ctypes.sizeof(attr) if abi >= SCOPE_ABI else _RulesetAttr.scoped.offset
    ruleset = _call(
        "create a ruleset", _SYS_CREATE_RULESET, ctypes.byref(attr), size, 0
    )
    try:
        _allow_ports(ruleset, rules.connect_ports, ACCESS_NET_CONNECT_TCP)
        _allow_ports(ruleset, rules.bind_ports, ACCESS_NET_BIND_TCP)
        _call("restrict this process", _SYS_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)


def _allow_ports(ruleset: int, ports: Iterable[int], access: int) -> None:
    for port in sorted(ports):
        rule = _NetPortAttr(allowed_access=access, port=port)
        _call(
            f"allow port {port}",
            _SYS_ADD_RULE,
            ruleset,
            _RULE_NET_PORT,
            ctypes.byref(rule),
            0,
        )


def _call(step: str, number: int, *args: object) -> int:
    # Variadic: a bare Python int would travel as a 32-bit C int.
    wide = [ctypes.c_long(arg) if isinstance(arg, int) else arg for arg in args]
    result = int(_libc.syscall(ctypes.c_long(number), *wide))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"Landlock: cannot {step}: {os.strerror(errno)}")
    return result
