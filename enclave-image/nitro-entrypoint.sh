#!/bin/sh
# Entrypoint of the Nitro target (docker build --target nitro). It runs as root
# inside an AWS Nitro Enclave, which has no network device, only vsock:
#
#   - `sandbox bridge` brings lo up, relays vsock port SANDBOX_VSOCK_INGRESS_PORT
#     (default 8443) to the ingress on 127.0.0.1:8443, and gives each egress
#     destination a loopback listener relayed to the parent (vsock CID 3), then
#     drops to uid 65534;
#   - the sandbox is then exec'd, told the loopback address of each destination
#     (--egress-host); it confines the app in a network namespace of its own,
#     as SANDBOX_APP_USER (uid 10001, set by the image's confined stage).
#
# SANDBOX_EGRESS_BRIDGES lists destinations, space-separated, HOST:PORT=VSOCKPORT:
#   SANDBOX_EGRESS_BRIDGES="models.example.com:443=8001 api.example.org:443=8002"
# The i-th (from 0) is bridged at 127.0.0.<10+i>:PORT to parent port VSOCKPORT;
# nitro-parent.sh, given the same value, relays each VSOCKPORT to HOST:PORT.
#
# The bridge runs in the background and nothing restarts it: if it dies, the
# ingress becomes unreachable and egress fails. That fails closed (no traffic),
# never open, and the enclave must be restarted.
#
# SANDBOX_DRY_RUN=1 prints the commands, one a line, instead of running them.
set -eu

entrypoint=/usr/local/bin/sandbox-entrypoint
ingress_port="${SANDBOX_VSOCK_INGRESS_PORT:-8443}"
bridges="${SANDBOX_EGRESS_BRIDGES:-}"
attestation="${SANDBOX_ATTESTATION:-nitro}"
dry_run="${SANDBOX_DRY_RUN:-}"
# Read as entrypoint.sh reads it, only to keep destinations off its port.
egress_listen="${SANDBOX_EGRESS_LISTEN:-127.0.0.1:3128}"
egress_port="${egress_listen##*:}"
parent_cid=3
first_address=10

fail() {
    echo "sandbox-nitro-entrypoint: $*" >&2
    exit 2
}

# Beside this script in the image, and in the repository.
. "$(dirname "$0")/egress-bridges.sh"

is_number "$ingress_port" 4294967294 || fail "SANDBOX_VSOCK_INGRESS_PORT:" \
    "expected a vsock port 1-4294967294, got '$ingress_port'"

entries=$(egress_bridges "$bridges")
bridge_pairs="vsock:any:$ingress_port=tcp:127.0.0.1:8443"
host_flags=""
index=0
while read -r host port vsock_port; do
    [ -n "$host" ] || continue
    # The app's own network namespace holds no bridge listener; but were it
    # ever to share the sandbox's (--app-network shared), Landlock would let
    # it reach the egress proxy's port on any address, a bridge's included.
    [ "$port" != "$egress_port" ] || fail "SANDBOX_EGRESS_BRIDGES: expected" \
        "a PORT other than the egress proxy's ($egress_port), got '$host:$port'"
    [ "$index" -lt 245 ] ||
        fail "SANDBOX_EGRESS_BRIDGES: expected at most 245 entries (127.0.0.10-254)"
    address="127.0.0.$((first_address + index))"
    bridge_pairs="$bridge_pairs tcp:$address:$port=vsock:$parent_cid:$vsock_port"
    host_flags="$host_flags --egress-host $host=$address"
    index=$((index + 1))
done <<ENTRIES
$entries
ENTRIES

# Every word of bridge_pairs and host_flags was checked above: none holds a
# blank or a glob character, so they are split unquoted.
set -f
# shellcheck disable=SC2086
start_bridge() {
    if [ -n "$dry_run" ]; then
        echo "$*"
        return
    fi
    "$@" &
    bridge_pid=$!
    wait_for_loopback
}

# The sandbox binds 127.0.0.1, which exists only once the bridge has brought
# lo up; starting it sooner would fail.
wait_for_loopback() {
    tries=0
    while :; do
        flags=$(cat /sys/class/net/lo/flags 2>/dev/null || echo 0)
        [ $((flags & 1)) -eq 1 ] && return
        kill -0 "$bridge_pid" 2>/dev/null ||
            { echo "sandbox-nitro-entrypoint: the bridge exited" >&2; exit 1; }
        tries=$((tries + 1))
        [ "$tries" -lt 100 ] ||
            { echo "sandbox-nitro-entrypoint: lo is not up after 10s" >&2; exit 1; }
        sleep 0.1
    done
}

start_sandbox() {
    if [ -n "$dry_run" ]; then
        echo "exec $*"
        exit 0
    fi
    exec "$@"
}

# shellcheck disable=SC2086
start_bridge python -m sandbox bridge --loopback-up --user 65534:65534 $bridge_pairs
# shellcheck disable=SC2086
start_sandbox env "SANDBOX_ATTESTATION=$attestation" "$entrypoint" $host_flags
