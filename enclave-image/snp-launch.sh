#!/bin/sh
# Starts the AMD SEV-SNP guest that runs the sandbox, on the SEV-SNP host:
#
#   SANDBOX_SNP_FIRMWARE=/usr/share/ovmf/OVMF.amdsev.fd \
#   SANDBOX_SNP_KERNEL=vmlinuz SANDBOX_SNP_INITRD=initrd.img \
#   SANDBOX_SNP_CMDLINE="console=ttyS0" \
#       enclave-image/snp-launch.sh policies/acme-clinical-notes
#
# HOST_DATA is set to the 32 bytes of the policy's hash (`sandbox policy
# measure`): the sandbox in the guest refuses to start under any other, and
# clients check it with `sandbox verify --policy`. It needs QEMU 9.1 or later,
# the first with the sev-snp-guest object, and a host kernel with SEV-SNP
# (Linux 6.11 or later).
#
# Settings (environment):
#   SANDBOX_QEMU                   QEMU binary (qemu-system-x86_64)
#   SANDBOX_SNP_FIRMWARE           SNP-capable OVMF, one stateless file (-bios);
#                                  required
#   SANDBOX_SNP_DISK               guest disk, .qcow2, .raw or .img
#   SANDBOX_SNP_KERNEL             measured direct boot: kernel, then optional
#   SANDBOX_SNP_INITRD               initrd and command line, all three hashed
#   SANDBOX_SNP_CMDLINE              into the launch measurement
#   SANDBOX_SNP_CPUS               vCPUs (2)
#   SANDBOX_SNP_MEMORY             MiB (2048)
#   SANDBOX_SNP_CPU_MODEL          QEMU -cpu model (EPYC-v4)
#   SANDBOX_SNP_POLICY             SNP guest policy (0x30000: SMT allowed, no
#                                  debugging, no migration agent)
#   SANDBOX_SNP_CBITPOS            C-bit position (51 on Milan and Genoa)
#   SANDBOX_SNP_REDUCED_PHYS_BITS  (1 on Milan and Genoa)
#   SANDBOX_HOST_INGRESS_PORT      host TCP port, on every host address, relayed
#                                  to the guest's sandbox ingress on 8443 (8443)
#   SANDBOX_SNP_MEASURE=1          first print the expected launch MEASUREMENT,
#                                  computed by sev-snp-measure (pip install
#                                  sev-snp-measure, in a venv of its own)
#   SANDBOX_SNP_GUEST_FEATURES     SEV features the measurement assumes (0x1)
#
# The launch measurement covers the firmware, and with SANDBOX_SNP_KERNEL the
# kernel, initrd and command line, never a disk: a guest that boots from its
# disk is measured by its firmware alone.
#
# QEMU is exec'd, so a supervisor's signals reach it. A malformed setting exits
# 2 saying what was expected; a missing tool exits 1 saying what to install.
# SANDBOX_DRY_RUN=1 prints the commands, one a line, instead of running them.
set -eu

qemu="${SANDBOX_QEMU:-qemu-system-x86_64}"
firmware="${SANDBOX_SNP_FIRMWARE:-}"
disk="${SANDBOX_SNP_DISK:-}"
kernel="${SANDBOX_SNP_KERNEL:-}"
initrd="${SANDBOX_SNP_INITRD:-}"
cmdline="${SANDBOX_SNP_CMDLINE:-}"
cpus="${SANDBOX_SNP_CPUS:-2}"
memory="${SANDBOX_SNP_MEMORY:-2048}"
cpu_model="${SANDBOX_SNP_CPU_MODEL:-EPYC-v4}"
policy="${SANDBOX_SNP_POLICY:-0x30000}"
cbitpos="${SANDBOX_SNP_CBITPOS:-51}"
reduced_phys_bits="${SANDBOX_SNP_REDUCED_PHYS_BITS:-1}"
host_port="${SANDBOX_HOST_INGRESS_PORT:-8443}"
measure="${SANDBOX_SNP_MEASURE:-}"
guest_features="${SANDBOX_SNP_GUEST_FEATURES:-0x1}"
dry_run="${SANDBOX_DRY_RUN:-}"
guest_ingress_port=8443
# SNP_LAUNCH_START refuses a policy without bit 17; bit 19 would let the host
# debug the guest, that is read its memory, policy and keys included.
policy_reserved_one=$((1 << 17))
policy_debug=$((1 << 19))

fail() {
    echo "snp-launch: $*" >&2
    exit 2
}

missing() {
    echo "snp-launch: $*" >&2
    exit 1
}

usage() {
    echo "usage: $0 POLICY_DIR (settings in the environment: see the script)" >&2
    exit 2
}

# Beside this script in the repository; gives is_number.
. "$(dirname "$0")/egress-bridges.sh"

# is_hex VALUE DIGITS: 0x and 1..DIGITS hex digits.
is_hex() {
    case "$1" in
        0x*) ;;
        *) return 1 ;;
    esac
    _digits="${1#0x}"
    case "$_digits" in
        '' | *[!0-9a-fA-F]*) return 1 ;;
    esac
    [ "${#_digits}" -le "$2" ]
}

# A QEMU option value is split on commas, and a file must exist to be measured.
check_file() {
    case "$2" in
        *,*) fail "$1: expected a path without ',', got '$2'" ;;
    esac
    [ -f "$2" ] || fail "$1: expected a file, got '$2' (no such file)"
}

check_numbers() {
    is_number "$cpus" 255 ||
        fail "SANDBOX_SNP_CPUS: expected a vCPU count 1-255, got '$cpus'"
    is_number "$memory" 4194304 ||
        fail "SANDBOX_SNP_MEMORY: expected MiB, 1-4194304, got '$memory'"
    is_number "$cbitpos" 63 && [ "$cbitpos" -ge 32 ] || fail "SANDBOX_SNP_CBITPOS:" \
        "expected the host's C-bit position 32-63 (51 on Milan and Genoa)," \
        "got '$cbitpos'"
    is_number "$reduced_phys_bits" 63 || fail "SANDBOX_SNP_REDUCED_PHYS_BITS:" \
        "expected 1-63 (1 on Milan and Genoa), got '$reduced_phys_bits'"
    is_number "$host_port" 65535 || fail "SANDBOX_HOST_INGRESS_PORT: expected" \
        "a port 1-65535, got '$host_port'"
}

check_policy() {
    is_hex "$policy" 8 || fail "SANDBOX_SNP_POLICY: expected 0x and at most 8" \
        "hex digits, e.g. 0x30000, got '$policy'"
    # shellcheck disable=SC2004
    [ $(($policy & policy_reserved_one)) -ne 0 ] || fail "SANDBOX_SNP_POLICY:" \
        "expected bit 17 set (reserved, must be one), got '$policy'"
    # shellcheck disable=SC2004
    [ $(($policy & policy_debug)) -eq 0 ] || fail "SANDBOX_SNP_POLICY: expected" \
        "bit 19 clear (debugging lets the host read the guest), got '$policy'"
}

check_boot() {
    [ -n "$firmware" ] || fail "SANDBOX_SNP_FIRMWARE: expected the SNP-capable" \
        "OVMF file, e.g. /usr/share/ovmf/OVMF.amdsev.fd, got nothing"
    check_file SANDBOX_SNP_FIRMWARE "$firmware"
    if [ -n "$kernel" ]; then
        check_file SANDBOX_SNP_KERNEL "$kernel"
        [ -z "$initrd" ] || check_file SANDBOX_SNP_INITRD "$initrd"
    else
        [ -z "$initrd" ] || fail "SANDBOX_SNP_INITRD: expected only with" \
            "SANDBOX_SNP_KERNEL (direct boot), got '$initrd' without it"
        [ -z "$cmdline" ] || fail "SANDBOX_SNP_CMDLINE: expected only with" \
            "SANDBOX_SNP_KERNEL (direct boot), got '$cmdline' without it"
        [ -n "$disk" ] || fail "SANDBOX_SNP_DISK: expected the guest disk" \
            "(or SANDBOX_SNP_KERNEL for direct boot), got nothing"
    fi
    [ -z "$disk" ] || check_file SANDBOX_SNP_DISK "$disk"
}

disk_format() {
    case "$disk" in
        *.qcow2) echo qcow2 ;;
        *.raw | *.img) echo raw ;;
        *) fail "SANDBOX_SNP_DISK: expected a .qcow2, .raw or .img file," \
            "got '$disk'" ;;
    esac
}

check_settings() {
    check_numbers
    check_policy
    case "$cpu_model" in
        '' | *[!A-Za-z0-9._-]*) fail "SANDBOX_SNP_CPU_MODEL: expected a QEMU" \
            "CPU model such as EPYC-v4 or EPYC-Genoa, got '$cpu_model'" ;;
    esac
    case "$measure" in
        '' | 0 | 1) ;;
        *) fail "SANDBOX_SNP_MEASURE: expected 1 (print the expected" \
            "measurement), 0 or nothing, got '$measure'" ;;
    esac
    is_hex "$guest_features" 16 || fail "SANDBOX_SNP_GUEST_FEATURES: expected" \
        "0x and at most 16 hex digits, e.g. 0x1, got '$guest_features'"
    check_boot
    [ -z "$disk" ] || disk_format >/dev/null
}

find_sandbox() {
    _root="$(cd "$(dirname "$0")/.." && pwd)"
    if [ -x "$_root/.venv/bin/sandbox" ]; then
        echo "$_root/.venv/bin/sandbox"
    elif command -v sandbox >/dev/null 2>&1; then
        command -v sandbox
    else
        missing "no sandbox command: run scripts/bootstrap, or put sandbox on PATH"
    fi
}

# Prints the policy's HOST_DATA as QEMU's host-data wants it: base64 of the
# 32 bytes, checked to be the policy hash's own bytes.
host_data() {
    command -v python3 >/dev/null 2>&1 ||
        missing "python3 is not installed (apt-get install python3)"
    _sandbox=$(find_sandbox)
    # bash, unlike dash, does not carry set -e into $(...): exit by hand.
    _measured=$("$_sandbox" policy measure --json "$1") || exit
    printf '%s' "$_measured" | python3 -c '
import base64, json, re, sys
values = json.load(sys.stdin)
host_data, policy_hash = values["snp_host_data"], values["policy_hash"]
if not re.fullmatch(r"[0-9a-f]{64}", host_data):
    sys.exit(f"snp_host_data is {host_data!r}, expected 64 hex digits")
if "sha256:" + host_data != policy_hash:
    sys.exit(f"snp_host_data {host_data} is not the bytes of {policy_hash}")
print(base64.b64encode(bytes.fromhex(host_data)).decode())
'
}

# quote WORD: WORD as a shell reads it back, so a printed command can be run.
quote() {
    case "$1" in
        '' | *[!A-Za-z0-9_./:=,+@%-]*)
            printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
        *) printf '%s' "$1" ;;
    esac
}

print_command() {
    _line=""
    for _word in "$@"; do
        _line="$_line${_line:+ }$(quote "$_word")"
    done
    echo "$_line"
}

# The launch digest depends on the firmware, the direct-boot files, the vCPU
# count and model (each VMSA holds the CPU signature) and the SEV features;
# HOST_DATA is reported beside it, not hashed into it.
expected_measurement() {
    set -- sev-snp-measure --mode snp --vcpus "$cpus" --vcpu-type "$cpu_model" \
        --guest-features "$guest_features" --ovmf "$firmware"
    if [ -n "$kernel" ]; then
        set -- "$@" --kernel "$kernel"
        [ -z "$initrd" ] || set -- "$@" --initrd "$initrd"
        [ -z "$cmdline" ] || set -- "$@" --append "$cmdline"
    fi
    if [ -n "$dry_run" ]; then
        print_command "$@"
        return
    fi
    command -v sev-snp-measure >/dev/null 2>&1 || missing "sev-snp-measure is" \
        "not installed (pip install sev-snp-measure, in a venv of its own)," \
        "or unset SANDBOX_SNP_MEASURE"
    _value=$("$@") || exit
    case "$_value" in
        *[!0-9a-f]* | '') missing "sev-snp-measure printed '$_value', expected" \
            "96 hex digits" ;;
    esac
    [ "${#_value}" -eq 96 ] ||
        missing "sev-snp-measure printed '$_value', expected 96 hex digits"
    echo "snp-launch: expected MEASUREMENT $_value (pin it:" \
        "pin-values.sh POLICY_DIR --snp-measurement $_value)" >&2
}

# QEMU 9.1 added sev-snp-guest, host-data with it: an older QEMU should stop
# here, saying what to install, rather than on an unknown object type.
check_qemu() {
    command -v "$qemu" >/dev/null 2>&1 || missing "no QEMU at '$qemu':" \
        "install qemu-system-x86 9.1 or later, or set SANDBOX_QEMU"
    _version=$("$qemu" --version |
        sed -n '1s/^QEMU emulator version \([0-9.]*\).*/\1/p')
    case "$_version" in
        [0-9]*.[0-9]*) ;;
        *) missing "'$qemu --version' printed no version, expected QEMU 9.1" \
            "or later" ;;
    esac
    _major="${_version%%.*}"
    _minor="${_version#*.}"
    _minor="${_minor%%.*}"
    [ "$_major" -gt 9 ] || { [ "$_major" -eq 9 ] && [ "$_minor" -ge 1 ]; } ||
        missing "expected QEMU 9.1 or later (sev-snp-guest), got $_version at" \
            "'$qemu': install a newer qemu-system-x86, or set SANDBOX_QEMU"
}

launch() {
    _guest="sev-snp-guest,id=sev0,policy=$policy,cbitpos=$cbitpos"
    _guest="$_guest,reduced-phys-bits=$reduced_phys_bits,host-data=$1"
    # Without kernel-hashes a direct-boot kernel would run unmeasured.
    [ -z "$kernel" ] || _guest="$_guest,kernel-hashes=on"
    _memfd="memory-backend-memfd,id=ram0,size=${memory}M,share=true,prealloc=false"
    _net="user,id=net0,hostfwd=tcp::$host_port-:$guest_ingress_port"
    # Private pages come from KVM's guest_memfd; the memfd backend, not
    # preallocated, holds only the pages the guest shares, as AMD's own launch
    # script sets it up. -bios, not pflash: one stateless image is measured
    # whole, where a separate variable store would be unmeasured state. An
    # SNP guest cannot be reset, so a reboot ends it.
    set -- "$qemu" -enable-kvm -cpu "$cpu_model" -smp "$cpus" -m "${memory}M" \
        -machine q35,confidential-guest-support=sev0,memory-backend=ram0 \
        -object "$_memfd" -object "$_guest" -bios "$firmware" -no-reboot \
        -nographic -netdev "$_net"
    # A guest with encrypted memory reaches virtio devices only through the
    # IOMMU path (iommu_platform); an option ROM would be code the launch
    # measurement does not cover (romfile=).
    set -- "$@" -device \
        virtio-net-pci,netdev=net0,disable-legacy=on,iommu_platform=true,romfile=
    if [ -n "$disk" ]; then
        set -- "$@" -drive "file=$disk,if=none,id=disk0,format=$(disk_format)" \
            -device virtio-blk-pci,drive=disk0,disable-legacy=on,iommu_platform=true
    fi
    if [ -n "$kernel" ]; then
        set -- "$@" -kernel "$kernel"
        [ -z "$initrd" ] || set -- "$@" -initrd "$initrd"
        [ -z "$cmdline" ] || set -- "$@" -append "$cmdline"
    fi
    if [ -n "$dry_run" ]; then
        print_command "$@"
        exit 0
    fi
    exec "$@"
}

main() {
    [ $# -eq 1 ] || usage
    [ -e "$1" ] || fail "POLICY_DIR: expected a policy folder (or policy file)," \
        "got '$1' (no such file or folder)"
    check_settings
    [ -n "$kernel" ] || echo "snp-launch: warning: no SANDBOX_SNP_KERNEL:" \
        "the launch measurement covers the firmware, not the disk it boots" >&2
    [ -n "$dry_run" ] || check_qemu

    _host_data=$(host_data "$1")
    [ "$measure" != 1 ] || expected_measurement
    launch "$_host_data"
}

main "$@"
