"""What a decision is asked about: plain data built by the adapters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Identity:
    """A caller proven by a verified token; nothing else counts as identity."""

    issuer: str
    subject: str
    claims: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IngressRequest:
    method: str
    path: str  # normalised once by the ingress adapter
    identity: Identity | None = None
    source: str = ""
    query: str = ""  # without '?'
    # Lower-case names, repeated fields joined with ", ", no Authorization
    # (see sandbox.policy.input_document.header_fields).
    headers: Mapping[str, str] = field(default_factory=dict)
    body_length: int | None = None  # as announced; None when not announced
