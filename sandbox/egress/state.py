"""The egress proxy's private state: its CA and the trust bundles built on it.

Everything is written at start into one directory of mode 0700; the CA key
is 0600. The directory doubles as mitmproxy's ``confdir``, under the file
names mitmproxy looks for, so mitmproxy loads our CA instead of making one.

Files:

``mitmproxy-ca.pem``
    CA key and certificate (0600), read by mitmproxy only.
``ca-cert.pem``
    The CA certificate alone.
``app-ca-bundle.pem``
    System roots plus the CA: what the app is told to trust.
``upstream-roots.pem``
    System roots plus any extra upstream CA: what origins are checked against.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from mitmproxy import certs
from mitmproxy.options import CONF_BASENAME

DEFAULT_SYSTEM_ROOTS = "/etc/ssl/certs/ca-certificates.crt"
CA_NAME = "policy-sandbox egress CA"
_KEY_SIZE = 2048


@dataclass(frozen=True, slots=True)
class EgressFiles:
    directory: Path
    ca_cert: Path
    app_bundle: Path
    upstream_roots: Path
    # Whether the directory was made for this run (and is removed after it).
    temporary: bool


def prepare_state(
    state_dir: str | None, system_roots: str, upstream_ca_file: str | None
) -> EgressFiles:
    """Create the directory, a fresh CA and both bundles. Blocking: use a thread."""
    directory, temporary = _private_directory(state_dir)
    roots = _system_roots(system_roots)
    key, ca = certs.create_ca(
        organization="policy-sandbox", cn=CA_NAME, key_size=_KEY_SIZE
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    cert_pem = ca.public_bytes(serialization.Encoding.PEM)
    _write(directory / f"{CONF_BASENAME}-ca.pem", key_pem + cert_pem, 0o600)
    _write(directory / f"{CONF_BASENAME}-dhparam.pem", certs.DEFAULT_DHPARAM, 0o600)
    files = EgressFiles(
        directory=directory,
        ca_cert=directory / "ca-cert.pem",
        app_bundle=directory / "app-ca-bundle.pem",
        upstream_roots=directory / "upstream-roots.pem",
        temporary=temporary,
    )
    _write(files.ca_cert, cert_pem, 0o644)
    _write(files.app_bundle, _joined(roots, cert_pem), 0o644)
    extra = Path(upstream_ca_file).read_bytes() if upstream_ca_file else b""
    _write(files.upstream_roots, _joined(roots, extra), 0o644)
    return files


def publish_app_bundle(files: EgressFiles, path: str) -> None:
    """Also put the app's trust bundle at ``path`` (0644), for an app that
    runs where the state directory is not (its own container). Replaced in
    one rename, so a reader never sees half of it. Blocking: use a thread."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.new")
    _write(staged, files.app_bundle.read_bytes(), 0o644)
    os.replace(staged, target)


def _private_directory(state_dir: str | None) -> tuple[Path, bool]:
    if state_dir is None:
        return Path(tempfile.mkdtemp(prefix="sandbox-egress-")), True
    directory = Path(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # An existing directory may have been made with a looser mode.
    os.chmod(directory, 0o700)
    return directory, False


def _system_roots(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(
            f"cannot read the system CA bundle {path}: {exc.strerror or exc} "
            "(install ca-certificates, or name another bundle)"
        ) from exc


def _joined(first: bytes, second: bytes) -> bytes:
    if first and not first.endswith(b"\n"):
        first += b"\n"
    return first + second


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with a file created at ``mode`` (never readable between)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
