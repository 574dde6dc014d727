"""A seccomp filter that lets the app create only the sockets Landlock governs.

Landlock restricts TCP only. Without this filter the app could still send
UDP, open ``AF_VSOCK`` to a Nitro enclave's parent, or use raw and packet
sockets. Allowed: ``AF_UNIX``, ``AF_NETLINK`` with the route protocol (the
C library's address lookup uses it), and ``AF_INET``/``AF_INET6`` stream
sockets with protocol 0 or TCP (so not MPTCP or SCTP). Everything else fails
with EACCES. io_uring, which can create sockets without the ``socket`` call,
fails with ENOSYS so programs fall back to ordinary calls. ``setns`` fails
with EPERM: the app stays in the network namespace it was started in (see
:mod:`sandbox.confine.netns`), whatever its privileges. A call from any
other architecture (32-bit compatibility modes, x32) kills the process: the
filter's system call numbers would not apply to it.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import socket
import struct
from dataclasses import dataclass

# Classic BPF opcodes, from linux/bpf_common.h.
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_AND_K = 0x54
_RET_K = 0x06

_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

# struct seccomp_data: nr, arch, instruction pointer, then six 64-bit
# arguments. Both supported machines are little-endian, so an argument's
# low 32 bits, all that socket() reads of its int parameters, come first.
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG = (16, 24, 32)

_X32_SYSCALL_BIT = 0x40000000
_SOCK_TYPE_MASK = 0xF
_NETLINK_ROUTE = 0

_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


@dataclass(frozen=True, slots=True)
class Architecture:
    audit_arch: int
    socket: int
    socketpair: int
    setns: int
    io_uring: tuple[int, ...]
    # x86_64 shares its table with x32, told apart by one bit of the number.
    x32_bit: bool


ARCHITECTURES = {
    "x86_64": Architecture(0xC000003E, 41, 53, 308, (425, 426, 427), x32_bit=True),
    "aarch64": Architecture(0xC00000B7, 198, 199, 268, (425, 426, 427), x32_bit=False),
}


def native_architecture() -> Architecture | None:
    return ARCHITECTURES.get(platform.machine())


class _Program:
    """A straight-line BPF program whose jumps name labels, resolved at the end."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | int, str | int, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._code)

    def load(self, offset: int) -> None:
        self._code.append((_LD_W_ABS, 0, 0, offset))

    def mask(self, bits: int) -> None:
        self._code.append((_AND_K, 0, 0, bits))

    def jump_if(self, opcode: int, value: int, then: str, otherwise: str = "") -> None:
        self._code.append((opcode, then, otherwise or 0, value))

    def ret(self, value: int) -> None:
        self._code.append((_RET_K, 0, 0, value))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, then, otherwise, k) in enumerate(self._code):
            out += struct.pack(
                "=HBBI",
                code,
                self._offset(index, then),
                self._offset(index, otherwise),
                k,
            )
        return bytes(out)

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        # Jumps count from the next instruction and only go forward.
        offset = self._labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"BPF jump to {target!r} out of range: {offset}")
        return offset


def socket_filter(arch: Architecture) -> bytes:
    """The filter program for ``arch``, as the kernel's sock_filter array."""
    program = _Program()
    program.load(_OFFSET_ARCH)
    program.jump_if(_JEQ_K, arch.audit_arch, then="native")
    program.ret(_RET_KILL_PROCESS)

    program.label("native")
    program.load(_OFFSET_NR)
    if arch.x32_bit:
        program.jump_if(_JGE_K, _X32_SYSCALL_BIT, then="kill")
    program.jump_if(_JEQ_K, arch.socket, then="socket")
    program.jump_if(_JEQ_K, arch.socketpair, then="socketpair")
    program.jump_if(_JEQ_K, arch.setns, then="eperm")
    for number in arch.io_uring:
        program.jump_if(_JEQ_K, number, then="nosys")
    program.ret(_RET_ALLOW)

    program.label("socketpair")
    program.load(_OFFSET_ARG[0])
    program.jump_if(_JEQ_K, socket.AF_UNIX, then="allow", otherwise="deny")

    program.label("socket")
    program.load(_OFFSET_ARG[0])
    program.jump_if(_JEQ_K, socket.AF_UNIX, then="allow")
    program.jump_if(_JEQ_K, socket.AF_NETLINK, then="netlink")
    program.jump_if(_JEQ_K, socket.AF_INET, then="inet")
    program.jump_if(_JEQ_K, socket.AF_INET6, then="inet", otherwise="deny")

    program.label("netlink")
    program.load(_OFFSET_ARG[2])
    program.jump_if(_JEQ_K, _NETLINK_ROUTE, then="allow", otherwise="deny")

    program.label("inet")
    program.load(_OFFSET_ARG[1])
    program.mask(_SOCK_TYPE_MASK)
    program.jump_if(_JEQ_K, socket.SOCK_STREAM, then="protocol", otherwise="deny")
    program.label("protocol")
    program.load(_OFFSET_ARG[2])
    program.jump_if(_JEQ_K, 0, then="allow")
    program.jump_if(_JEQ_K, socket.IPPROTO_TCP, then="allow", otherwise="deny")

    program.label("allow")
    program.ret(_RET_ALLOW)
    program.label("deny")
    program.ret(_RET_ERRNO | errno.EACCES)
    program.label("nosys")
    program.ret(_RET_ERRNO | errno.ENOSYS)
    program.label("eperm")
    program.ret(_RET_ERRNO | errno.EPERM)
    program.label("kill")
    program.ret(_RET_KILL_PROCESS)
    return program.assemble()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)


def set_no_new_privs() -> None:
    _prctl("set no_new_privs", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def install(program: bytes) -> None:
    """Install ``program`` on this process; it is inherited across exec."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len=len(program) // 8, filter=ctypes.addressof(buffer))
    _prctl(
        "install the seccomp filter",
        _PR_SET_SECCOMP,
        _SECCOMP_MODE_FILTER,
        ctypes.addressof(fprog),
        0,
        0,
    )


def _prctl(step: str, *args: int) -> None:
    wide = [ctypes.c_ulong(arg) for arg in args]
    if _libc.prctl(*wide) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"cannot {step}: {errno.errorcode.get(number, number)}")
