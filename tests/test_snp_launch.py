"""snp-launch.sh, the SEV-SNP host's launcher, and pin-values.sh's measurement.

``SANDBOX_DRY_RUN=1`` makes the launcher print its commands instead of running
them: no SEV-SNP host, QEMU or sev-snp-measure is needed to check the wiring.
The policy hash is computed for real by the sandbox. The paths that run the
tools are run with stand-ins that print their arguments; QEMU never starts.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox.attestation.measure import expected_host_data
from sandbox.policy.loader import load_policy

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "enclave-image"
LAUNCHER = IMAGE / "snp-launch.sh"
PIN_VALUES = IMAGE / "pin-values.sh"
POLICY = ROOT / "policies/acme-clinical-notes"
MEASUREMENT = "5a" * 48


def run_launcher(
    env: dict[str, str], *args: str, script: Path = LAUNCHER
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(script), *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def boot(tmp_path: Path) -> dict[str, str]:
    """Placeholder firmware and disk: the launcher checks they exist."""
    files = {"SANDBOX_SNP_FIRMWARE": "OVMF.amdsev.fd", "SANDBOX_SNP_DISK": "g.qcow2"}
    for name in files.values():
        (tmp_path / name).write_bytes(b"\0")
    return {setting: str(tmp_path / name) for setting, name in files.items()}


@pytest.fixture
def direct_boot(tmp_path: Path, boot: dict[str, str]) -> dict[str, str]:
    for name in ("vmlinuz", "initrd.img"):
        (tmp_path / name).write_bytes(b"\0")
    return {
        "SANDBOX_SNP_FIRMWARE": boot["SANDBOX_SNP_FIRMWARE"],
        "SANDBOX_SNP_KERNEL": str(tmp_path / "vmlinuz"),
        "SANDBOX_SNP_INITRD": str(tmp_path / "initrd.img"),
        "SANDBOX_SNP_CMDLINE": "console=ttyS0 root=/dev/ram0 it's quoted",
    }


def dry_run(
    boot: dict[str, str], policy: Path = POLICY, **env: str
) -> subprocess.CompletedProcess[str]:
    return run_launcher({"SANDBOX_DRY_RUN": "1", **boot, **env}, str(policy))


def planned(boot: dict[str, str], **env: str) -> list[list[str]]:
    result = dry_run(boot, **env)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[index + 1] for index, word in enumerate(argv) if word == flag]


def pairs(option: str) -> dict[str, str]:
    """A QEMU ``key=value,...`` option; values may hold '=' (base64)."""
    return dict(pair.split("=", 1) for pair in option.split(","))


def properties(option: str) -> tuple[str, dict[str, str]]:
    """A QEMU ``type,key=value,...`` option."""
    kind, _, rest = option.partition(",")
    return kind, pairs(rest)


def objects(argv: list[str]) -> dict[str, dict[str, str]]:
    return dict(properties(option) for option in values(argv, "-object"))


def host_data_of(policy: Path) -> str:
    digest = expected_host_data(load_policy(policy).hash)
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize(
    "policy",
    [POLICY, IMAGE / "compose-policy"],
    ids=["acme-clinical-notes", "compose-policy"],
)
def test_host_data_is_the_base64_of_the_policy_hash_bytes(
    boot: dict[str, str], policy: Path
) -> None:
    result = dry_run(boot, policy)

    assert result.returncode == 0, result.stderr
    [qemu] = [shlex.split(line) for line in result.stdout.splitlines()]
    guest = objects(qemu)["sev-snp-guest"]
    assert guest["host-data"] == host_data_of(policy)
    assert len(base64.b64decode(guest["host-data"])) == 32


def test_a_disk_boot_is_a_confidential_guest_on_memfd_memory(
    boot: dict[str, str],
) -> None:
    [qemu] = planned(boot)

    assert qemu[0] == "qemu-system-x86_64"
    kind, machine = properties(values(qemu, "-machine")[0])
    assert (kind, machine["confidential-guest-support"]) == ("q35", "sev0")
    memory = objects(qemu)["memory-backend-memfd"]
    assert machine["memory-backend"] == memory["id"]
    assert (memory["size"], memory["share"]) == ("2048M", "true")
    assert objects(qemu)["sev-snp-guest"] == {
        "id": "sev0",
        "policy": "0x30000",
        "cbitpos": "51",
        "reduced-phys-bits": "1",
        "host-data": host_data_of(POLICY),
    }
    assert values(qemu, "-bios") == [boot["SANDBOX_SNP_FIRMWARE"]]
    assert (values(qemu, "-smp"), values(qemu, "-m")) == (["2"], ["2048M"])
    assert values(qemu, "-cpu") == ["EPYC-v4"]
    assert "-kernel" not in qemu and "-no-reboot" in qemu


def test_a_disk_boot_warns_that_the_disk_is_not_measured(
    boot: dict[str, str],
) -> None:
    result = dry_run(boot)

    assert "the launch measurement covers the firmware, not the disk" in (result.stderr)


def test_the_host_port_is_relayed_to_the_guest_ingress(boot: dict[str, str]) -> None:
    [qemu] = planned(boot, SANDBOX_HOST_INGRESS_PORT="9443")

    _, netdev = properties(values(qemu, "-netdev")[0])
    assert netdev["hostfwd"] == "tcp::9443-:8443"
    nic = [device for device in values(qemu, "-device") if "netdev=" in device]
    _, nic_properties = properties(nic[0])
    assert nic_properties["netdev"] == netdev["id"]
    assert nic_properties["iommu_platform"] == "true"
    assert nic_properties["romfile"] == ""


def test_the_disk_is_attached_in_the_format_its_name_says(
    tmp_path: Path, boot: dict[str, str]
) -> None:
    raw = tmp_path / "guest.img"
    raw.write_bytes(b"\0")

    [qcow2_boot] = planned(boot)
    [raw_boot] = planned(boot, SANDBOX_SNP_DISK=str(raw))

    qcow2_drive = pairs(values(qcow2_boot, "-drive")[0])
    raw_drive = pairs(values(raw_boot, "-drive")[0])
    assert (qcow2_drive["file"], qcow2_drive["format"]) == (
        boot["SANDBOX_SNP_DISK"],
        "qcow2",
    )
    assert (raw_drive["file"], raw_drive["format"]) == (str(raw), "raw")


def test_direct_boot_adds_kernel_hashes_and_the_boot_files(
    direct_boot: dict[str, str],
) -> None:
    [qemu] = planned(direct_boot)

    assert objects(qemu)["sev-snp-guest"]["kernel-hashes"] == "on"
    assert values(qemu, "-kernel") == [direct_boot["SANDBOX_SNP_KERNEL"]]
    assert values(qemu, "-initrd") == [direct_boot["SANDBOX_SNP_INITRD"]]
    assert values(qemu, "-append") == [direct_boot["SANDBOX_SNP_CMDLINE"]]
    assert "-drive" not in qemu


def test_settings_override_the_defaults(boot: dict[str, str]) -> None:
    [qemu] = planned(
        boot,
        SANDBOX_QEMU="/opt/qemu/bin/qemu-system-x86_64",
        SANDBOX_SNP_CPUS="8",
        SANDBOX_SNP_MEMORY="16384",
        SANDBOX_SNP_CPU_MODEL="EPYC-Genoa",
        SANDBOX_SNP_POLICY="0x20000",
        SANDBOX_SNP_CBITPOS="47",
        SANDBOX_SNP_REDUCED_PHYS_BITS="5",
    )

    guest = objects(qemu)["sev-snp-guest"]
    assert qemu[0] == "/opt/qemu/bin/qemu-system-x86_64"
    assert (values(qemu, "-smp"), values(qemu, "-m")) == (["8"], ["16384M"])
    assert objects(qemu)["memory-backend-memfd"]["size"] == "16384M"
    assert values(qemu, "-cpu") == ["EPYC-Genoa"]
    assert (guest["policy"], guest["cbitpos"], guest["reduced-phys-bits"]) == (
        "0x20000",
        "47",
        "5",
    )


def test_the_measurement_is_computed_from_what_qemu_is_given(
    direct_boot: dict[str, str],
) -> None:
    measure, qemu = planned(
        direct_boot,
        SANDBOX_SNP_MEASURE="1",
        SANDBOX_SNP_CPUS="4",
        SANDBOX_SNP_GUEST_FEATURES="0x21",
    )

    assert measure[:3] == ["sev-snp-measure", "--mode", "snp"]
    assert values(measure, "--vcpus") == values(qemu, "-smp") == ["4"]
    assert values(measure, "--vcpu-type") == values(qemu, "-cpu")
    assert values(measure, "--ovmf") == values(qemu, "-bios")
    assert values(measure, "--kernel") == values(qemu, "-kernel")
    assert values(measure, "--initrd") == values(qemu, "-initrd")
    assert values(measure, "--append") == values(qemu, "-append")
    assert values(measure, "--guest-features") == ["0x21"]


def test_a_disk_boot_measures_the_firmware_alone(boot: dict[str, str]) -> None:
    measure, _qemu = planned(boot, SANDBOX_SNP_MEASURE="1")

    assert "--kernel" not in measure
    assert values(measure, "--ovmf") == [boot["SANDBOX_SNP_FIRMWARE"]]


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("SANDBOX_SNP_CPUS", "0", "expected a vCPU count 1-255, got '0'"),
        ("SANDBOX_SNP_CPUS", "two", "expected a vCPU count 1-255, got 'two'"),
        ("SANDBOX_SNP_MEMORY", "2G", "expected MiB, 1-4194304, got '2G'"),
        ("SANDBOX_SNP_CPU_MODEL", "EPYC v4", "expected a QEMU CPU model"),
        ("SANDBOX_SNP_POLICY", "196608", "expected 0x and at most 8 hex digits"),
        ("SANDBOX_SNP_POLICY", "0x10000", "expected bit 17 set"),
        ("SANDBOX_SNP_POLICY", "0xb0000", "expected bit 19 clear (debugging"),
        ("SANDBOX_SNP_CBITPOS", "64", "expected the host's C-bit position 32-63"),
        ("SANDBOX_SNP_CBITPOS", "31", "expected the host's C-bit position 32-63"),
        ("SANDBOX_SNP_REDUCED_PHYS_BITS", "0", "expected 1-63"),
        ("SANDBOX_HOST_INGRESS_PORT", "65536", "expected a port 1-65535"),
        ("SANDBOX_HOST_INGRESS_PORT", "08443", "expected a port 1-65535"),
        ("SANDBOX_SNP_MEASURE", "yes", "expected 1 (print the expected"),
        ("SANDBOX_SNP_GUEST_FEATURES", "33", "expected 0x and at most 16 hex"),
        ("SANDBOX_SNP_DISK", "/srv/a,b.qcow2", "expected a path without ','"),
    ],
)
def test_a_malformed_setting_exits_2_naming_it(
    boot: dict[str, str], setting: str, value: str, message: str
) -> None:
    result = dry_run(boot, **{setting: value})

    assert result.returncode == 2
    assert f"snp-launch: {setting}: " in result.stderr
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "setting",
    [
        "SANDBOX_SNP_FIRMWARE",
        "SANDBOX_SNP_KERNEL",
        "SANDBOX_SNP_INITRD",
    ],
)
def test_a_missing_boot_file_exits_2_naming_it(
    tmp_path: Path, direct_boot: dict[str, str], setting: str
) -> None:
    absent = str(tmp_path / "absent")

    result = dry_run(direct_boot, **{setting: absent})

    assert result.returncode == 2
    assert f"{setting}: expected a file, got '{absent}' (no such file)" in (
        result.stderr
    )


def test_a_missing_disk_exits_2(tmp_path: Path, boot: dict[str, str]) -> None:
    result = dry_run(boot, SANDBOX_SNP_DISK=str(tmp_path / "absent.qcow2"))

    assert result.returncode == 2
    assert "SANDBOX_SNP_DISK: expected a file" in result.stderr


def test_a_disk_of_unknown_format_exits_2(tmp_path: Path, boot: dict[str, str]) -> None:
    disk = tmp_path / "guest.vmdk"
    disk.write_bytes(b"\0")

    result = dry_run(boot, SANDBOX_SNP_DISK=str(disk))

    assert result.returncode == 2
    assert "SANDBOX_SNP_DISK: expected a .qcow2, .raw or .img file" in result.stderr


def test_no_firmware_exits_2_saying_which_file_is_wanted(
    boot: dict[str, str],
) -> None:
    result = dry_run(boot, SANDBOX_SNP_FIRMWARE="")

    assert result.returncode == 2
    assert "SANDBOX_SNP_FIRMWARE: expected the SNP-capable OVMF file" in (result.stderr)


def test_nothing_to_boot_exits_2(boot: dict[str, str]) -> None:
    result = dry_run(boot, SANDBOX_SNP_DISK="")

    assert result.returncode == 2
    assert "SANDBOX_SNP_DISK: expected the guest disk" in result.stderr


@pytest.mark.parametrize("setting", ["SANDBOX_SNP_INITRD", "SANDBOX_SNP_CMDLINE"])
def test_direct_boot_pieces_without_a_kernel_exit_2(
    direct_boot: dict[str, str], boot: dict[str, str], setting: str
) -> None:
    result = dry_run(boot, **{setting: direct_boot[setting]})

    assert result.returncode == 2
    assert f"{setting}: expected only with SANDBOX_SNP_KERNEL" in result.stderr


def test_a_missing_policy_folder_fails_clearly(
    tmp_path: Path, boot: dict[str, str]
) -> None:
    absent = tmp_path / "no-such-policy"

    result = dry_run(boot, absent)

    assert result.returncode == 2
    assert (
        f"POLICY_DIR: expected a policy folder (or policy file), got '{absent}'"
        in result.stderr
    )
    assert result.stdout == ""


def test_a_broken_policy_stops_the_launch_with_the_loaders_message(
    tmp_path: Path, boot: dict[str, str]
) -> None:
    (tmp_path / "policy.yaml").write_text("ingress: [\n")

    result = dry_run(boot, tmp_path)

    assert result.returncode == 1
    assert "policy.yaml" in result.stderr
    assert result.stdout == ""


def test_the_policy_argument_is_required(boot: dict[str, str]) -> None:
    result = run_launcher({"SANDBOX_DRY_RUN": "1", **boot})

    assert result.returncode == 2
    assert "usage:" in result.stderr


@pytest.fixture
def stand_ins(tmp_path: Path) -> Path:
    """A folder whose qemu-system-x86_64 and sev-snp-measure print, never run."""
    folder = tmp_path / "stand-ins"
    folder.mkdir()
    tools = {
        "qemu-system-x86_64": (
            'if [ "$1" = --version ]; then\n'
            '    echo "${QEMU_VERSION:-QEMU emulator version 9.1.0 (stand-in)}"\n'
            "    exit 0\nfi\n"
            'for word in "$@"; do echo "$word"; done\n'
        ),
        "sev-snp-measure": (
            'for word in "$@"; do echo "$word"; done > "$0.args"\n'
            'echo "${MEASURED:-' + MEASUREMENT + '}"\n'
        ),
    }
    for name, body in tools.items():
        tool = folder / name
        tool.write_text("#!/bin/sh\n" + body)
        tool.chmod(0o755)
    return folder


def launch(
    stand_ins: Path, boot: dict[str, str], **env: str
) -> subprocess.CompletedProcess[str]:
    path = f"{stand_ins}:{os.environ['PATH']}"
    return run_launcher({**boot, **env, "PATH": path}, str(POLICY))


def test_a_real_launch_execs_qemu_with_the_planned_arguments(
    stand_ins: Path, boot: dict[str, str]
) -> None:
    [plan] = planned(boot)

    result = launch(stand_ins, boot)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == plan[1:]


def test_a_real_launch_prints_the_expected_measurement_first(
    stand_ins: Path, direct_boot: dict[str, str]
) -> None:
    measure, _qemu = planned(direct_boot, SANDBOX_SNP_MEASURE="1")

    result = launch(stand_ins, direct_boot, SANDBOX_SNP_MEASURE="1")

    assert result.returncode == 0, result.stderr
    assert f"expected MEASUREMENT {MEASUREMENT}" in result.stderr
    assert f"--snp-measurement {MEASUREMENT}" in result.stderr
    recorded = (stand_ins / "sev-snp-measure.args").read_text().splitlines()
    assert recorded == measure[1:]


def test_a_measurement_that_is_not_96_hex_digits_stops_the_launch(
    stand_ins: Path, boot: dict[str, str]
) -> None:
    result = launch(stand_ins, boot, SANDBOX_SNP_MEASURE="1", MEASURED="abc")

    assert result.returncode == 1
    assert "sev-snp-measure printed 'abc', expected 96 hex digits" in result.stderr
    assert result.stdout == ""


def test_a_qemu_older_than_9_1_is_refused(
    stand_ins: Path, boot: dict[str, str]
) -> None:
    result = launch(
        stand_ins, boot, QEMU_VERSION="QEMU emulator version 8.2.2 (Debian)"
    )

    assert result.returncode == 1
    assert "expected QEMU 9.1 or later (sev-snp-guest), got 8.2.2" in result.stderr
    assert result.stdout == ""


def test_a_qemu_that_prints_no_version_is_refused(
    stand_ins: Path, boot: dict[str, str]
) -> None:
    result = launch(stand_ins, boot, QEMU_VERSION="not QEMU")

    assert result.returncode == 1
    assert "--version' printed no version, expected QEMU 9.1 or later" in (
        result.stderr
    )


def test_qemu_10_is_accepted(stand_ins: Path, boot: dict[str, str]) -> None:
    result = launch(stand_ins, boot, QEMU_VERSION="QEMU emulator version 10.0.0")

    assert result.returncode == 0, result.stderr


def test_a_missing_qemu_exits_1_saying_what_to_install(
    tmp_path: Path, boot: dict[str, str]
) -> None:
    qemu = str(tmp_path / "no-qemu")

    result = run_launcher({**boot, "SANDBOX_QEMU": qemu}, str(POLICY))

    assert result.returncode == 1
    assert f"no QEMU at '{qemu}': install qemu-system-x86 9.1 or later" in (
        result.stderr
    )


def test_a_missing_sev_snp_measure_exits_1_saying_what_to_install(
    stand_ins: Path, boot: dict[str, str]
) -> None:
    (stand_ins / "sev-snp-measure").unlink()
    path = f"{stand_ins}:/usr/bin:/bin"

    result = run_launcher(
        {**boot, "SANDBOX_SNP_MEASURE": "1", "PATH": path}, str(POLICY)
    )

    assert result.returncode == 1
    assert "sev-snp-measure is not installed (pip install sev-snp-measure" in (
        result.stderr
    )


def test_a_missing_sandbox_command_exits_1_saying_what_to_do(
    tmp_path: Path, boot: dict[str, str]
) -> None:
    # Away from the repository, the launcher finds no .venv beside it.
    copy = tmp_path / "checkout/enclave-image"
    copy.mkdir(parents=True)
    for name in ("snp-launch.sh", "egress-bridges.sh"):
        shutil.copy(IMAGE / name, copy / name)

    result = run_launcher(
        {"SANDBOX_DRY_RUN": "1", **boot, "PATH": "/usr/bin:/bin"},
        str(POLICY),
        script=copy / "snp-launch.sh",
    )

    assert result.returncode == 1
    assert "no sandbox command: run scripts/bootstrap" in result.stderr


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_the_launcher_parses(shell: str) -> None:
    result = subprocess.run(
        [shell, "-n", str(LAUNCHER)], capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr


def test_the_launcher_is_an_executable_posix_script() -> None:
    text = LAUNCHER.read_text()

    assert text.startswith("#!/bin/sh\n") and "set -eu" in text
    assert LAUNCHER.stat().st_mode & 0o111, "executable"


def pin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PIN_VALUES), *args], capture_output=True, text=True, timeout=30
    )


def flags(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("--")]


def test_pin_values_prints_the_snp_measurement_as_a_verify_flag() -> None:
    result = pin(str(POLICY), "--snp-measurement", MEASUREMENT.upper())

    assert result.returncode == 0, result.stderr
    assert flags(result)[0] == f"--policy {load_policy(POLICY).hash}"
    assert flags(result)[-1] == f"--measurement {MEASUREMENT}"


def test_pin_values_takes_the_measurement_beside_a_nitro_build_output(
    tmp_path: Path,
) -> None:
    build_output = tmp_path / "build-enclave.json"
    pcrs = {f"PCR{index}": f"{index:02x}" * 48 for index in (0, 1, 2)}
    build_output.write_text(
        '{"Measurements": {"HashAlgorithm": "Sha384 { ... }", '
        + ", ".join(f'"{name}": "{value}"' for name, value in pcrs.items())
        + "}}"
    )

    result = pin(f"--snp-measurement={MEASUREMENT}", str(POLICY), str(build_output))

    assert result.returncode == 0, result.stderr
    assert [flag.split()[0] for flag in flags(result)] == [
        "--policy",
        "--pcr",
        "--pcr",
        "--pcr",
        "--pcr",
        "--measurement",
    ]
    assert flags(result)[-2] == f"--pcr 2={pcrs['PCR2']}"


@pytest.mark.parametrize(
    "value",
    ["zz", MEASUREMENT[:-1], MEASUREMENT + "0", "0x" + MEASUREMENT[2:], ""],
    ids=["not-hex", "95-digits", "97-digits", "0x-prefix", "empty"],
)
def test_pin_values_refuses_a_malformed_measurement(value: str) -> None:
    result = pin(str(POLICY), "--snp-measurement", value)

    assert result.returncode == 2
    assert (
        "--snp-measurement: expected the SEV-SNP launch MEASUREMENT, "
        f"96 hex digits (48 bytes), got '{value}'"
    ) in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [["--snp-measurement"], ["--pcr", "16"], ["a", "b", "c"]],
    ids=["no-value", "unknown-option", "three-positionals"],
)
def test_pin_values_prints_its_usage_for_arguments_it_cannot_use(
    args: list[str],
) -> None:
    result = pin(str(POLICY), *args)

    assert result.returncode == 2
    assert "usage:" in result.stderr and "--snp-measurement HEX" in result.stderr
