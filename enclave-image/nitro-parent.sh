#!/bin/sh
# The parent EC2 instance's side of the enclave's vsock bridges, with socat
# (apt-get install socat / dnf install socat): the sandbox need not be
# installed on the parent, and these relays decide nothing. The policy is
# enforced inside the enclave, which reaches only what is listed here.
#
#   - TCP SANDBOX_PARENT_INGRESS_PORT (default 8443) on every address of the
#     parent is relayed to vsock SANDBOX_ENCLAVE_CID (default 16) port
#     SANDBOX_VSOCK_INGRESS_PORT (default 8443): the enclave's ingress;
#   - each SANDBOX_EGRESS_BRIDGES entry HOST:PORT=VSOCKPORT (space-separated,
#     the value given to the enclave) listens on vsock VSOCKPORT and connects
#     to HOST:PORT.
#
# Runs until SIGTERM or SIGINT, which stop every relay. A relay that dies is
# not restarted: run this under a supervisor (systemd) that restarts it.
# SANDBOX_DRY_RUN=1 prints the commands, one a line, instead of running them.
set -eu

parent_port="${SANDBOX_PARENT_INGRESS_PORT:-8443}"
enclave_cid="${SANDBOX_ENCLAVE_CID:-16}"
ingress_port="${SANDBOX_VSOCK_INGRESS_PORT:-8443}"
bridges="${SANDBOX_EGRESS_BRIDGES:-}"
dry_run="${SANDBOX_DRY_RUN:-}"

fail() {
    echo "nitro-parent: $*" >&2
    exit 2
}

# Beside this script in the repository.
. "$(dirname "$0")/egress-bridges.sh"

is_number "$parent_port" 65535 || fail "SANDBOX_PARENT_INGRESS_PORT:" \
    "expected a port 1-65535, got '$parent_port'"
is_number "$enclave_cid" 4294967294 || fail "SANDBOX_ENCLAVE_CID: expected" \
    "the CID given to nitro-cli run-enclave --enclave-cid, got '$enclave_cid'"
is_number "$ingress_port" 4294967294 || fail "SANDBOX_VSOCK_INGRESS_PORT:" \
    "expected a vsock port 1-4294967294, got '$ingress_port'"

relays="TCP-LISTEN:$parent_port,fork,reuseaddr"
relays="$relays VSOCK-CONNECT:$enclave_cid:$ingress_port"
entries=$(egress_bridges "$bridges")
while read -r host port vsock_port; do
    [ -n "$host" ] || continue
    relays="$relays
VSOCK-LISTEN:$vsock_port,fork,reuseaddr TCP:$host:$port"
done <<ENTRIES
$entries
ENTRIES

if [ -n "$dry_run" ]; then
    echo "$relays" | sed 's/^/socat /'
    exit 0
fi

command -v socat >/dev/null 2>&1 ||
    { echo "nitro-parent: socat is not installed" >&2; exit 1; }

pids=""
stop() {
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill $pids 2>/dev/null || true
}
trap 'stop; exit 0' TERM INT
# One relay a line; each line is two checked socat addresses split on the blank.
IFS='
'
for relay in $relays; do
    IFS=' '
    # shellcheck disable=SC2086
    socat $relay &
    pids="$pids $!"
done
wait
