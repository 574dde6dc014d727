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

# is_number VALUE MAX: a decimal 1..MAX without leading zeros.
is_number() {
    case "$1" in
        '' | *[!0-9]* | 0* | ???????????*) return 1 ;;
    esac
    [ "$1" -le "$2" ]
}

is_number "$parent_port" 65535 || fail "SANDBOX_PARENT_INGRESS_PORT:" \
    "expected a port 1-65535, got '$parent_port'"
is_number "$enclave_cid" 4294967294 || fail "SANDBOX_ENCLAVE_CID: expected" \
    "the CID given to nitro-cli run-enclave --enclave-cid, got '$enclave_cid'"
is_number "$ingress_port" 4294967294 || fail "SANDBOX_VSOCK_INGRESS_PORT:" \
    "expected a vsock port 1-4294967294, got '$ingress_port'"

relays="TCP-LISTEN:$parent_port,fork,reuseaddr"
relays="$relays VSOCK-CONNECT:$enclave_cid:$ingress_port"
seen=" "
# Entries are split on blanks and never globbed. Each HOST and VSOCKPORT once,
# as in the enclave, which gives each HOST one loopback address.
set -f
for entry in $bridges; do
    expected="expected HOST:PORT=VSOCKPORT, e.g. models.example.com:443=8001"
    case "$entry" in
        *:*=*) ;;
        *) fail "SANDBOX_EGRESS_BRIDGES: $expected, got '$entry'" ;;
    esac
    target="${entry%%=*}"
    vsock_port="${entry#*=}"
    host="${target%:*}"
    port="${target##*:}"
    case "$host" in
        '' | *[!A-Za-z0-9.-]*)
            fail "SANDBOX_EGRESS_BRIDGES: $expected (HOST a DNS name), got '$entry'" ;;
    esac
    is_number "$port" 65535 ||
        fail "SANDBOX_EGRESS_BRIDGES: expected PORT 1-65535 in '$entry', got '$port'"
    is_number "$vsock_port" 4294967294 || fail "SANDBOX_EGRESS_BRIDGES:" \
        "expected VSOCKPORT 1-4294967294 in '$entry', got '$vsock_port'"
    case "$seen" in
        *" $host "*)
            fail "SANDBOX_EGRESS_BRIDGES: expected each HOST once, got '$host' twice" ;;
        *" =$vsock_port "*) fail "SANDBOX_EGRESS_BRIDGES:" \
            "expected each VSOCKPORT once, got '$vsock_port' twice" ;;
    esac
    seen="$seen$host =$vsock_port "
    relays="$relays
VSOCK-LISTEN:$vsock_port,fork,reuseaddr TCP:$host:$port"
done

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
