"""The enclave image, its entrypoint, pin-values.sh and the compose stack.

No Docker engine or enclave hardware runs here: these tests read what the files
declare, check the shell scripts' syntax and run pin-values.sh for real.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox.attestation.measure import expected_pcr16
from sandbox.policy.loader import load_policy

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "enclave-image"
DOCKERFILE = IMAGE / "Dockerfile"
ENTRYPOINT = IMAGE / "entrypoint.sh"
NITRO_ENTRYPOINT = IMAGE / "nitro-entrypoint.sh"
NITRO_PARENT = IMAGE / "nitro-parent.sh"
PIN_VALUES = IMAGE / "pin-values.sh"
BRIDGES_LIBRARY = IMAGE / "egress-bridges.sh"
SCRIPTS = [ENTRYPOINT, NITRO_ENTRYPOINT, NITRO_PARENT, PIN_VALUES, BRIDGES_LIBRARY]
POSIX_SCRIPTS = [ENTRYPOINT, NITRO_ENTRYPOINT, NITRO_PARENT]
COMPOSE_POLICY = IMAGE / "compose-policy"
PCRS = {index: f"{index:02x}" * 48 for index in (0, 1, 2)}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def stages() -> list[str]:
    """The Dockerfile cut at each FROM, each piece starting with its FROM."""
    text = DOCKERFILE.read_text()
    starts = [match.start() for match in re.finditer(r"^FROM ", text, re.M)]
    return [
        text[start:end] for start, end in zip(starts, [*starts[1:], None], strict=True)
    ]


def stage(name: str) -> str:
    return next(piece for piece in stages() if piece.split("\n")[0].endswith(name))


def final_stage() -> str:
    return stage(" AS final")


def instructions(text: str) -> list[str]:
    """Dockerfile instructions with continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = (line.strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_app_is_attached_only_to_an_internal_network(compose: dict[str, Any]) -> None:
    app_networks = compose["services"]["app"]["networks"]

    assert app_networks == ["internal"]
    assert compose["networks"]["internal"]["internal"] is True
    assert compose["networks"]["outside"].get("internal", False) is False


def test_sandbox_sits_on_both_networks_and_publishes_ingress(
    compose: dict[str, Any],
) -> None:
    sandbox = compose["services"]["sandbox"]

    assert set(sandbox["networks"]) == {"internal", "outside"}
    assert sandbox["ports"] == ["8443:8443"]
    assert sandbox["build"]["dockerfile"] == "enclave-image/Dockerfile"
    assert sandbox["environment"]["SANDBOX_ATTESTATION"] == "simulated"
    assert sandbox["environment"]["SANDBOX_UPSTREAM"] == "http://app:8081"
    assert sandbox["environment"]["SANDBOX_APP_COMMAND"] == ""


def test_app_proxy_variables_point_at_the_sandbox_egress_listener(
    compose: dict[str, Any],
) -> None:
    environment = compose["services"]["app"]["environment"]
    listen = compose["services"]["sandbox"]["environment"]["SANDBOX_EGRESS_LISTEN"]
    port = listen.rsplit(":", 1)[1]

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        assert (
            environment[name] == environment[name.lower()] == f"http://sandbox:{port}"
        )
    assert environment["NO_PROXY"] == environment["no_proxy"] == ""
    assert listen == "0.0.0.0:3128"


def test_outside_services_are_not_on_the_internal_network(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    subnet = compose["networks"]["outside"]["ipam"]["config"][0]["subnet"]
    registry_rule = next(
        rule
        for rule in load_policy(COMPOSE_POLICY).egress.rules
        if rule.name == "model-registry"
    )

    for name in ("registry", "pastebin"):
        assert set(services[name]["networks"]) == {"outside"}
    assert [str(cidr) for cidr in registry_rule.allow_cidrs] == [subnet]


def test_the_app_trusts_the_ca_the_sandbox_publishes_not_its_key(
    compose: dict[str, Any],
) -> None:
    sandbox, app = compose["services"]["sandbox"], compose["services"]["app"]
    published = Path(sandbox["environment"]["SANDBOX_EGRESS_APP_BUNDLE"])
    (sandbox_mount,) = sandbox["volumes"]
    (app_mount,) = app["volumes"]
    volume, sandbox_dir = sandbox_mount.split(":")
    app_volume, app_dir, mode = app_mount.split(":")

    assert volume == app_volume and volume in compose["volumes"]
    assert published.parent == Path(sandbox_dir) and mode == "ro"
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        assert app["environment"][name] == f"{app_dir}/{published.name}"
    # The shared folder is not the state folder, where the CA key is.
    state_dir = "/var/lib/sandbox/state"
    assert f'"${{SANDBOX_STATE_DIR:-{state_dir}}}"' in ENTRYPOINT.read_text()
    assert not Path(state_dir).is_relative_to(sandbox_dir)
    # A named volume takes the owner of the image's folder: the sandbox's uid.
    assert f"install -d -o 10001 -g 10001 -m 0755 {sandbox_dir}" in final_stage()
    assert "--egress-app-bundle" in ENTRYPOINT.read_text()


def test_the_app_starts_once_the_sandbox_has_published_the_bundle(
    compose: dict[str, Any],
) -> None:
    sandbox, app = compose["services"]["sandbox"], compose["services"]["app"]
    check = " ".join(sandbox["healthcheck"]["test"])

    assert app["depends_on"] == {"sandbox": {"condition": "service_healthy"}}
    assert "http://127.0.0.1:9901/healthz" in check
    assert '"${SANDBOX_ADMIN_LISTEN:-127.0.0.1:9901}"' in ENTRYPOINT.read_text()


def test_opa_is_optional_and_the_real_image(compose: dict[str, Any]) -> None:
    opa = compose["services"]["opa"]

    assert opa["profiles"] == ["opa"]
    name, tag = opa["image"].split(":")
    assert name == "openpolicyagent/opa"
    assert re.fullmatch(r"\d+\.\d+\.\d+-static", tag), "a release, not latest"
    assert opa["command"][:2] == ["run", "--server"]
    assert opa["networks"] == ["internal"]


def test_final_image_runs_as_a_non_root_user() -> None:
    users = [
        line.split()[1]
        for line in instructions(final_stage())
        if line.startswith("USER ")
    ]

    assert users[-1] == "10001:10001"
    assert "useradd --uid 10001" in final_stage()


def test_building_without_a_target_still_makes_the_non_root_image() -> None:
    last = instructions(stages()[-1])

    assert last == ["FROM final AS default"]


def test_confined_targets_start_as_root_and_name_the_apps_user() -> None:
    confined = instructions(stage(" AS confined"))

    assert confined[0] == "FROM final AS confined"
    assert [line for line in confined if line.startswith("USER ")] == ["USER root"]
    assert "ENV SANDBOX_APP_USER=10001:10001" in confined
    for target in ("nitro", "sev-snp"):
        assert instructions(stage(f" AS {target}"))[0] == (f"FROM confined AS {target}")
    assert "ENV SANDBOX_ATTESTATION=sev-snp" in instructions(stage(" AS sev-snp"))


def test_confined_targets_keep_the_state_folder_out_of_the_apps_hands() -> None:
    # The app runs as uid 10001 there, the owner of /var/lib/sandbox in the
    # final stage: the confined stage takes the folder back, traverse-only.
    confined = instructions(stage(" AS confined"))

    assert (
        "RUN chown -R root:root /var/lib/sandbox && chmod 0711 /var/lib/sandbox"
        in confined
    )


def test_nitro_target_adds_the_bridges_and_their_entrypoint() -> None:
    nitro = instructions(stage(" AS nitro"))

    assert [line for line in nitro if line.startswith("USER ")] == []
    assert "ENV SANDBOX_EGRESS_BRIDGES=${EGRESS_BRIDGES}" in nitro
    copies = [line.split() for line in nitro if line.startswith("COPY")]
    # The entrypoint sources its parser from its own folder.
    assert copies == [
        [
            "COPY",
            "--chmod=0644",
            "enclave-image/egress-bridges.sh",
            "/usr/local/lib/sandbox/",
        ],
        [
            "COPY",
            "--chmod=0755",
            "enclave-image/nitro-entrypoint.sh",
            "/usr/local/lib/sandbox/",
        ],
    ]
    assert nitro[-2:] == [
        'ENTRYPOINT ["/usr/local/lib/sandbox/nitro-entrypoint.sh"]',
        "CMD []",
    ]


def test_pip_installs_only_hash_pinned_runtime_locks() -> None:
    installs = [
        line
        for line in instructions(DOCKERFILE.read_text())
        if re.search(r"\bpip\b.*\binstall\b", line)
    ]

    assert installs, "the builder installs the locked dependencies"
    for line in installs:
        assert "--require-hashes" in line and "--no-deps" in line
        assert re.search(r"-r \S*requirements\.lock$", line), line
        assert "requirements-dev.lock" not in line


def test_nothing_is_fetched_in_the_final_stage_or_at_start() -> None:
    fetchers = re.compile(r"\b(curl|wget|pip|apt-get|apk|git|ADD)\b")

    targets = [stage(f" AS {name}") for name in ("confined", "sev-snp", "nitro")]
    for line in instructions(final_stage() + "".join(targets)):
        assert not fetchers.search(line), line
    for script in (ENTRYPOINT, NITRO_ENTRYPOINT, BRIDGES_LIBRARY):
        for line in instructions(script.read_text()):
            assert not fetchers.search(line), line


def test_entrypoint_passes_the_policy_attestation_and_listeners() -> None:
    text = ENTRYPOINT.read_text()

    assert text.startswith("#!/bin/sh\n") and "set -eu" in text
    for flag in (
        '--policy "$policy"',
        '--attestation "$attestation"',
        '--egress-listen "$egress_listen"',
        '--state-dir "$state_dir"',
        '--audit-log "$audit_log"',
    ):
        assert flag in text
    assert '"${SANDBOX_ATTESTATION:-nitro}"' in text
    assert '"${SANDBOX_EGRESS_LISTEN:-127.0.0.1:3128}"' in text
    assert '"${SANDBOX_ADMIN_LISTEN:-127.0.0.1:9901}"' in text
    assert 'ENTRYPOINT ["/usr/local/bin/sandbox-entrypoint"]' in final_stage()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script: Path) -> None:
    result = subprocess.run(
        ["/bin/bash", "-n", str(script)], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh here")
@pytest.mark.parametrize("script", POSIX_SCRIPTS, ids=lambda p: p.name)
def test_entrypoints_parse_as_posix_sh(script: Path) -> None:
    sh = shutil.which("sh") or "sh"
    result = subprocess.run([sh, "-n", str(script)], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert script.read_text().startswith("#!/bin/sh\n")
    assert "set -eu" in script.read_text()
    assert script.stat().st_mode & 0o111, "executable"


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh here")
def test_the_sourced_bridges_parser_parses_as_posix_sh() -> None:
    sh = shutil.which("sh") or "sh"
    result = subprocess.run(
        [sh, "-n", str(BRIDGES_LIBRARY)], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr


def test_pin_values_prints_policy_pcr16_and_nitro_pcrs(tmp_path: Path) -> None:
    folder = ROOT / "policies/acme-clinical-notes"
    build_output = tmp_path / "build-enclave.json"
    measurements = {"HashAlgorithm": "Sha384 { ... }"}
    measurements.update({f"PCR{index}": value for index, value in PCRS.items()})
    build_output.write_text(json.dumps({"Measurements": measurements}))
    policy_hash = load_policy(folder).hash

    result = subprocess.run(
        [str(PIN_VALUES), str(folder), str(build_output)],
        capture_output=True,
        text=True,
        check=True,
    )

    flags = [line for line in result.stdout.splitlines() if line.startswith("--")]
    assert flags == [
        f"--policy {policy_hash}",
        f"--pcr 16={expected_pcr16(policy_hash).hex()}",
        f"--pcr 0={PCRS[0]}",
        f"--pcr 1={PCRS[1]}",
        f"--pcr 2={PCRS[2]}",
    ]
    assert policy_hash.removeprefix("sha256:") in result.stdout.splitlines()[2]


def test_pin_values_refuses_a_malformed_pcr(tmp_path: Path) -> None:
    build_output = tmp_path / "build-enclave.json"
    measurements = {
        "HashAlgorithm": "Sha384 { ... }",
        "PCR0": "zz",
        "PCR1": "",
        "PCR2": "",
    }
    build_output.write_text(json.dumps({"Measurements": measurements}))

    result = subprocess.run(
        [
            str(PIN_VALUES),
            str(ROOT / "policies/acme-clinical-notes"),
            str(build_output),
        ],
        capture_output=True,
        text=True,
    )

    assert result.returncode != 0
    assert "PCR0 is 'zz', expected 96 hex digits" in result.stderr


def test_compose_policy_loads_and_its_cases_pass() -> None:
    policy = load_policy(COMPOSE_POLICY)

    assert policy.hash.startswith("sha256:")
    assert "tests.yaml" in [file.path for file in policy.files]
    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "policy", "test", str(COMPOSE_POLICY)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout
