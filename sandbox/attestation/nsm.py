"""The Nitro provider: the Nitro Secure Module behind ``/dev/nsm``.

Each call is one ioctl, ``_IOWR(0x0A, 0, struct nsm_message)``, where the
message is two iovecs (address and length, 64 bits each): the CBOR request
and a buffer for the CBOR response, whose length the driver rewrites.
Requests and responses follow the NSM API's externally tagged enums::

    {"DescribePCR": {"index": 16}}      -> {"DescribePCR": {"lock": b, "data": h}}
    {"ExtendPCR": {"index": 16, "data": bytes}} -> {"ExtendPCR": {"data": h}}
    {"LockPCR": {"index": 16}}          -> "LockPCR"
    {"Attestation": {"user_data": ..., "nonce": ..., "public_key": ...}}
                                        -> {"Attestation": {"document": bytes}}
    any failure                         -> {"Error": "InvalidIndex" | ...}

The transport sits behind ``NsmTransport`` so tests can use a device double
that speaks the same bytes.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import logging
import os
import struct
import threading
from typing import Any, Protocol

import cbor2

from sandbox.attestation import measure
from sandbox.errors import AttestationDeviceError, PolicyBindingError

logger = logging.getLogger("sandbox.attestation")

NSM_DEVICE = "/dev/nsm"
NSM_IOCTL_MAGIC = 0x0A
NSM_REQUEST_MAX = 0x1000
NSM_RESPONSE_MAX = 0x3000
_MESSAGE = struct.Struct("=QQQQ")


def iowr(kind: int, number: int, size: int) -> int:
    """Linux ``_IOWR``: read-write direction, argument size, type, number."""
    return (3 << 30) | (size << 16) | (kind << 8) | number


NSM_IOCTL_REQUEST = iowr(NSM_IOCTL_MAGIC, 0, _MESSAGE.size)


class NsmTransport(Protocol):
    def exchange(self, request: bytes) -> bytes:
        """Send one CBOR request, return the CBOR response (blocking)."""
        ...


class NsmDevice:
    """``/dev/nsm`` through its ioctl; one request at a time."""

    def __init__(self, path: str = NSM_DEVICE) -> None:
        self.path = path
        self._lock = threading.Lock()

    def exchange(self, request: bytes) -> bytes:
        if len(request) > NSM_REQUEST_MAX:
            raise AttestationDeviceError(
                f"{self.path}: request of {len(request)} bytes exceeds the "
                f"{NSM_REQUEST_MAX}-byte limit"
            )
        with self._lock:
            return self._ioctl(request)

    def _ioctl(self, request: bytes) -> bytes:
        request_buffer = ctypes.create_string_buffer(request, len(request))
        response_buffer = ctypes.create_string_buffer(NSM_RESPONSE_MAX)
        message = bytearray(
            _MESSAGE.pack(
                ctypes.addressof(request_buffer),
                len(request),
                ctypes.addressof(response_buffer),
                NSM_RESPONSE_MAX,
            )
        )
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise AttestationDeviceError(f"{self.path}: cannot open: {exc}") from exc
        try:
            fcntl.ioctl(fd, NSM_IOCTL_REQUEST, message, True)
        except OSError as exc:
            raise AttestationDeviceError(f"{self.path}: ioctl failed: {exc}") from exc
        finally:
            os.close(fd)
        length = _MESSAGE.unpack(message)[3]
        return response_buffer.raw[: min(length, NSM_RESPONSE_MAX)]


class NitroProvider:
    """Binds the policy into PCR16 and returns NSM attestation documents."""

    name = "nitro"

    def __init__(
        self, transport: NsmTransport | None = None, *, device: str = NSM_DEVICE
    ) -> None:
        self._transport = transport or NsmDevice(device)
        self._policy_hash: str | None = None

    async def start(self, policy_hash: str) -> None:
        """Extend PCR16 with the policy bytes, then lock it."""
        await asyncio.to_thread(self._bind, policy_hash)
        self._policy_hash = policy_hash

    async def attest(
        self, nonce: bytes, public_key: bytes, user_data: bytes | None = None
    ) -> bytes:
        """A document from the NSM; ``user_data`` defaults to the policy label."""
        if self._policy_hash is None:
            raise RuntimeError("nitro provider: call start(policy_hash) first")
        label = measure.nitro_user_data(self._policy_hash)
        request = {
            "Attestation": {
                "user_data": label if user_data is None else user_data,
                "nonce": nonce,
                "public_key": public_key,
            }
        }
        body = await asyncio.to_thread(self._call, request, "Attestation")
        document: bytes = _field(body, "Attestation", "document", bytes)
        return document

    def _bind(self, policy_hash: str) -> None:
        expected = measure.expected_pcr16(policy_hash)
        index = measure.POLICY_PCR
        state = self._call({"DescribePCR": {"index": index}}, "DescribePCR")
        value = _field(state, "DescribePCR", "data", bytes)
        if _field(state, "DescribePCR", "lock", bool):
            _require_pcr(value, expected, "is already locked")
            logger.info("PCR16 already holds this policy and is locked")
            return
        _require_pcr(value, bytes(measure.PCR_BYTES), "was extended before start")
        extended = self._call(
            {"ExtendPCR": {"index": index, "data": measure.policy_digest(policy_hash)}},
            "ExtendPCR",
        )
        _require_pcr(
            _field(extended, "ExtendPCR", "data", bytes), expected, "after extend"
        )
        self._call({"LockPCR": {"index": index}}, "LockPCR")
        logger.info("PCR16 extended with policy %s and locked", policy_hash)

    def _call(self, request: dict[str, Any], operation: str) -> Any:
        raw = self._transport.exchange(cbor2.dumps(request))
        try:
            response = cbor2.loads(raw)
        except (cbor2.CBORDecodeError, ValueError) as exc:
            raise AttestationDeviceError(
                f"NSM {operation}: response is not CBOR: {exc}"
            ) from exc
        if isinstance(response, dict) and "Error" in response:
            raise AttestationDeviceError(
                f"NSM {operation}: device answered {response['Error']}"
            )
        if response == operation:
            return {}
        if not isinstance(response, dict) or operation not in response:
            raise AttestationDeviceError(
                f"NSM {operation}: expected a {operation} response, "
                f"got {response!r:.80}"
            )
        return response[operation]


def _field(body: Any, operation: str, name: str, kind: type) -> Any:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, kind):
        raise AttestationDeviceError(
            f"NSM {operation}: expected {name!r} of type {kind.__name__}, "
            f"got {type(value).__name__}"
        )
    return value


def _require_pcr(actual: bytes, expected: bytes, when: str) -> None:
    if actual != expected:
        raise PolicyBindingError(
            f"PCR16 {when}: expected {expected.hex()}, the NSM has {actual.hex()}"
        )
