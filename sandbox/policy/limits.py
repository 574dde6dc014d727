"""Reading of per-caller limits on ingress allow rules: ``rate`` and ``quota``.

    rate:  {per_second: 5, burst: 10, key: subject}
    quota: {requests: 1000, per: 1d, key: claim:tenant}    # or bytes: 10MiB

``key`` says whose requests count together: ``subject`` (the verified
token's issuer and subject; the default for rules that need a token),
``source`` (the caller's address; the default for anonymous rules) or
``claim:NAME`` (one value of a token claim, e.g. a tenant).
"""

from __future__ import annotations

from typing import Any, Literal

from sandbox.policy.fields import FieldReader
from sandbox.policy.model import CallerKey, Quota, RateLimit

_RATE_FIELDS = {"per_second", "burst", "key"}
_QUOTA_FIELDS = {"requests", "bytes", "per", "key"}


def read_rate(
    reader: FieldReader, path: str, value: Any, anonymous: bool
) -> RateLimit | None:
    item = reader.mapping(path, value, _RATE_FIELDS, {"per_second"})
    if item is None or "per_second" not in item:
        return None
    per_second = _positive_number(reader, f"{path}.per_second", item["per_second"])
    burst = item.get("burst", max(per_second, 1))
    burst = _positive_number(reader, f"{path}.burst", burst)
    if burst < 1:
        reader.problem(f"{path}.burst", f"expected at least 1, got {burst!r}")
    return RateLimit(per_second, burst, _read_key(reader, path, item, anonymous))


def read_quota(
    reader: FieldReader, path: str, value: Any, anonymous: bool
) -> Quota | None:
    item = reader.mapping(path, value, _QUOTA_FIELDS, {"per"})
    if item is None:
        return None
    units = [unit for unit in ("requests", "bytes") if unit in item]
    if len(units) != 1:
        reader.problem(path, "expected exactly one of 'requests' or 'bytes'")
        return None
    unit: Literal["requests", "bytes"] = "bytes"
    if units == ["requests"]:
        unit = "requests"
        limit = _count(reader, f"{path}.requests", item["requests"])
    else:
        limit = reader.size(f"{path}.bytes", item["bytes"])
    window = reader.duration(f"{path}.per", item.get("per"))
    if window <= 0:
        reader.problem(f"{path}.per", "expected a window above zero, e.g. 1h or 1d")
    key = _read_key(reader, path, item, anonymous)
    return Quota(limit, unit, window, key)


def _read_key(
    reader: FieldReader, path: str, item: dict[str, Any], anonymous: bool
) -> CallerKey:
    text = item.get("key", "source" if anonymous else "subject")
    if text in ("subject", "source"):
        if text == "subject" and anonymous:
            reader.problem(
                f"{path}.key",
                "an anonymous rule has no verified subject; use 'source'",
            )
        return CallerKey(text)
    if isinstance(text, str) and text.startswith("claim:") and text[6:]:
        if anonymous:
            reader.problem(f"{path}.key", "an anonymous rule has no token claims")
        return CallerKey("claim", text[6:])
    reader.problem(
        f"{path}.key",
        f"expected 'subject', 'source' or 'claim:NAME', got {text!r}",
    )
    return CallerKey("source")


def _positive_number(reader: FieldReader, path: str, value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    reader.problem(path, f"expected a number above zero, got {value!r}")
    return 1.0


def _count(reader: FieldReader, path: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    reader.problem(path, f"expected a whole number above zero, got {value!r}")
    return 1
