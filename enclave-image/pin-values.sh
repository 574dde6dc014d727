#!/usr/bin/env bash
# Prints what a client pins, as `sandbox verify` flags:
#   enclave-image/pin-values.sh POLICY_DIR [NITRO_BUILD_OUTPUT_JSON]
# NITRO_BUILD_OUTPUT_JSON is what `nitro-cli build-enclave` printed on stdout.
set -euo pipefail

usage() {
    echo "usage: $0 POLICY_DIR [NITRO_BUILD_OUTPUT_JSON]" >&2
    exit 2
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
    [[ $# -ge 1 && $# -le 2 ]] || usage
    local sandbox
    sandbox="$(find_sandbox)"

    "$sandbox" policy measure --json "$1" | read_measure
    if [[ $# -eq 2 ]]; then
        read_nitro "$2"
    fi
}

main "$@"
