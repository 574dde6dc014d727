#!/usr/bin/env bash
# Prints what a client pins, as `sandbox verify` flags:
#   enclave-image/pin-values.sh POLICY_DIR [NITRO_BUILD_OUTPUT_JSON]
#       [--snp-measurement HEX]
# NITRO_BUILD_OUTPUT_JSON is what `nitro-cli build-enclave` printed on stdout;
# HEX is the SEV-SNP launch MEASUREMENT (snp-launch.sh with
# SANDBOX_SNP_MEASURE=1 prints it), printed back as --measurement once checked.
set -euo pipefail

usage() {
    echo "usage: $0 POLICY_DIR [NITRO_BUILD_OUTPUT_JSON] [--snp-measurement HEX]" >&2
    exit 2
}

# A typo in a pinned value would only surface as a refused verification.
check_measurement() {
    # tr, not ${1,,}: macOS still ships bash 3.2.
    local value
    value="$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')"
    if [[ ! "$value" =~ ^[0-9a-f]{96}$ ]]; then
        echo "$0: --snp-measurement: expected the SEV-SNP launch MEASUREMENT," \
            "96 hex digits (48 bytes), got '$1'" >&2
        exit 2
    fi
    echo "$value"
}

find_sandbox() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [[ -x "$root/.venv/bin/sandbox" ]]; then
        echo "$root/.venv/bin/sandbox"
    elif command -v sandbox >/dev/null; then
        command -v sandbox
    else
        echo "$0: no sandbox command: run scripts/bootstrap, or put sandbox on PATH" >&2
        exit 1
    fi
}

# Reads `sandbox policy measure --json` on stdin; prints the flags and values.
read_measure() {
    python3 -c '
import json, sys
values = json.load(sys.stdin)
print("--policy " + values["policy_hash"])
print("--pcr 16=" + values["nitro_pcr16"])
print("# SEV-SNP HOST_DATA (set at launch; --policy checks it): " + values["snp_host_data"])
'
}

# Reads nitro-cli build-enclave output; prints --pcr 0, 1 and 2.
read_nitro() {
    python3 -c '
import json, re, sys
path = sys.argv[1]
with open(path, encoding="utf-8") as file:
    measurements = json.load(file)["Measurements"]
algorithm = measurements.get("HashAlgorithm", "")
if not algorithm.startswith("Sha384"):
    sys.exit(f"{path}: HashAlgorithm is {algorithm!r}, expected Sha384")
for index in (0, 1, 2):
    value = measurements[f"PCR{index}"].lower()
    if not re.fullmatch(r"[0-9a-f]{96}", value):
        sys.exit(f"{path}: PCR{index} is {value!r}, expected 96 hex digits")
    print(f"--pcr {index}={value}")
' "$1"
}

main() {
    local positional=() measurement="" sandbox
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --snp-measurement)
                [[ $# -ge 2 ]] || usage
                measurement="$(check_measurement "$2")"
                shift 2
                ;;
            --snp-measurement=*)
                measurement="$(check_measurement "${1#*=}")"
                shift
                ;;
            -*) usage ;;
            *)
                positional+=("$1")
                shift
                ;;
        esac
    done
    [[ ${#positional[@]} -ge 1 && ${#positional[@]} -le 2 ]] || usage
    sandbox="$(find_sandbox)"

    "$sandbox" policy measure --json "${positional[0]}" | read_measure
    if [[ ${#positional[@]} -eq 2 ]]; then
        read_nitro "${positional[1]}"
    fi
    if [[ -n "$measurement" ]]; then
        echo "--measurement $measurement"
    fi
}

main "$@"
