"""Reading of the ``egress`` section's rules into their validated form.

An allow rule names hosts and ports, and may narrow what it allows
(schemes, methods, paths), bound it (``max_request_body``,
``max_bytes_out``) or open private ranges (``allow_cidrs``). A deny rule
names hosts, and ports when it should deny only some of them.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from sandbox.policy.addresses import BLOCKED_NETWORKS, IPNetwork
from sandbox.policy.fields import FieldReader
from sandbox.policy.model import EFFECTS, EgressRule

_FIELDS = {
    "name",
    "effect",
    "hosts",
    "ports",
    "schemes",
    "methods",
    "paths",
    "max_request_body",
    "max_bytes_out",
    "allow_cidrs",
}
_ALLOW_ONLY = (
    "schemes",
    "methods",
    "paths",
    "max_request_body",
    "max_bytes_out",
    "allow_cidrs",
)
SCHEMES = ("http", "https")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def read_egress_rules(reader: FieldReader, value: Any) -> tuple[EgressRule, ...]:
    items = reader.sequence("egress.rules", value)
    rules = [
        _read_rule(reader, f"egress.rules[{index}]", item)
        for index, item in enumerate(items)
    ]
    reader.unique("egress.rules", [r.name if r else None for r in rules], "rule name")
    return tuple(rule for rule in rules if rule is not None)


def _read_rule(reader: FieldReader, path: str, value: Any) -> EgressRule | None:
    item = reader.mapping(path, value, _FIELDS, {"name", "hosts"})
    if item is None:
        return None
    effect = reader.choice(f"{path}.effect", item.get("effect", "allow"), EFFECTS)
    _check_effect_fields(reader, path, item, effect)
    hosts = [
        _read_host(reader, f"{path}.hosts[{index}]", text)
        for index, text in enumerate(reader.strings(f"{path}.hosts", item.get("hosts")))
    ]
    budget, window = _read_budget(reader, f"{path}.max_bytes_out", item)
    return EgressRule(
        name=reader.identifier(f"{path}.name", item.get("name")),
        effect=effect,
        hosts=tuple(host for host in hosts if host),
        ports=_read_ports(reader, f"{path}.ports", item.get("ports", [])),
        line=reader.document.line_of(path),
        schemes=_read_schemes(reader, f"{path}.schemes", item),
        methods=frozenset(
            reader.methods(f"{path}.methods", item["methods"], allow_any=False)
            if "methods" in item
            else ()
        ),
        paths=(
            reader.path_patterns(f"{path}.paths", item["paths"])
            if "paths" in item
            else ()
        ),
        max_request_body=_read_optional_size(reader, path, item, "max_request_body"),
        max_bytes_out=budget,
        bytes_out_window=window,
        allow_cidrs=_read_cidrs(reader, f"{path}.allow_cidrs", item),
    )


def _check_effect_fields(
    reader: FieldReader, path: str, item: dict[str, Any], effect: str
) -> None:
    if effect == "allow" and "ports" not in item:
        reader.problem(path, "an allow rule must name its ports (e.g. ports: [443])")
    if effect == "deny":
        for allow_only in _ALLOW_ONLY:
            if allow_only in item:
                reader.problem(f"{path}.{allow_only}", "applies to allow rules only")


def _read_ports(reader: FieldReader, path: str, value: Any) -> tuple[int, ...]:
    ports = []
    for index, port in enumerate(reader.sequence(path, value)):
        if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
            ports.append(port)
        else:
            reader.problem(f"{path}[{index}]", f"expected a port 1-65535, got {port!r}")
    return tuple(ports)


def _read_host(reader: FieldReader, path: str, text: str) -> str:
    """Canonical form: lower-case punycode without trailing dot."""
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    name = name.rstrip(".") if name.endswith(".") and not name.endswith("..") else name
    try:
        address = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        if wildcard:
            reader.problem(path, f"{text!r}: a wildcard cannot prefix an IP address")
            return ""
        return str(address)
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        reader.problem(path, f"{text!r} is not a valid host name: {exc}")
        return ""
    if not all(_HOST_LABEL.match(label) for label in ascii_name.split(".")):
        reader.problem(
            path,
            f"{text!r} is not a valid host name: exact name or '*.suffix' expected",
        )
        return ""
    return f"*.{ascii_name}" if wildcard else ascii_name


def _read_schemes(
    reader: FieldReader, path: str, item: dict[str, Any]
) -> frozenset[str]:
    if "schemes" not in item:
        return frozenset()
    schemes = reader.strings(path, item["schemes"])
    for index, scheme in enumerate(schemes):
        if scheme not in SCHEMES:
            hint = " (WebSockets follow: ws is http, wss is https)"
            shown = hint if scheme in ("ws", "wss") else ""
            reader.problem(
                f"{path}[{index}]",
                f"expected one of {list(SCHEMES)!r}, got {scheme!r}{shown}",
            )
    return frozenset(scheme for scheme in schemes if scheme in SCHEMES)


def _read_optional_size(
    reader: FieldReader, path: str, item: dict[str, Any], key: str
) -> int | None:
    if key not in item:
        return None
    return reader.size(f"{path}.{key}", item[key])


def _read_budget(
    reader: FieldReader, path: str, item: dict[str, Any]
) -> tuple[int | None, float]:
    """``10MiB/1h``: a size, a slash, a window above zero."""
    if "max_bytes_out" not in item:
        return None, 0.0
    text = item["max_bytes_out"]
    size, slash, window = text.partition("/") if isinstance(text, str) else ("", "", "")
    if not slash:
        reader.problem(
            path, f"expected a size per window like '10MiB/1h', got {text!r}"
        )
        return None, 0.0
    limit = reader.size(path, size.strip())
    seconds = reader.duration(path, window.strip())
    if window.strip() and seconds <= 0:
        reader.problem(path, f"the window must be above zero, got {window!r}")
    return limit, seconds


def _read_cidrs(
    reader: FieldReader, path: str, item: dict[str, Any]
) -> tuple[IPNetwork, ...]:
    if "allow_cidrs" not in item:
        return ()
    networks = []
    for index, text in enumerate(reader.strings(path, item["allow_cidrs"])):
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            reader.problem(f"{path}[{index}]", f"{text!r} is not a network: {exc}")
            continue
        if not _overlaps_blocked(network):
            reader.problem(
                f"{path}[{index}]",
                f"{text!r} holds no private or special addresses, so there is "
                "nothing to open; public addresses need no allow_cidrs",
            )
        networks.append(network)
    return tuple(networks)


def _overlaps_blocked(network: IPNetwork) -> bool:
    return any(
        network.version == blocked.version and network.overlaps(blocked)
        for blocked, _ in BLOCKED_NETWORKS
    )
