# shellcheck shell=sh
# Sourced by nitro-entrypoint.sh (in the enclave) and nitro-parent.sh (on the
# parent), which must read SANDBOX_EGRESS_BRIDGES the same way: both sides of
# a bridge are built from one entry. snp-launch.sh uses is_number only.
#
# egress_bridges VALUE prints one checked entry a line, "HOST PORT VSOCKPORT",
# in the order given; on a malformed value it says what was expected on
# stderr and exits 2 (run it in $(...) under set -e, so the caller stops too).
# Entries are HOST:PORT=VSOCKPORT, split on blanks and never globbed; each
# HOST and each VSOCKPORT may appear once.

# is_number VALUE MAX: a decimal 1..MAX without leading zeros.
is_number() {
    case "$1" in
        '' | *[!0-9]* | 0* | ???????????*) return 1 ;;
    esac
    [ "$1" -le "$2" ]
}

egress_bridges() {
    _seen=" "
    _expected="expected HOST:PORT=VSOCKPORT, e.g. models.example.com:443=8001"
    set -f
    for _entry in $1; do
        case "$_entry" in
            *:*=*) ;;
            *) _bridges_fail "$_expected, got '$_entry'" ;;
        esac
        _target="${_entry%%=*}"
        _vsock_port="${_entry#*=}"
        _host="${_target%:*}"
        _port="${_target##*:}"
        case "$_host" in
            '' | *[!A-Za-z0-9.-]*)
                _bridges_fail "$_expected (HOST a DNS name), got '$_entry'" ;;
        esac
        is_number "$_port" 65535 ||
            _bridges_fail "expected PORT 1-65535 in '$_entry', got '$_port'"
        is_number "$_vsock_port" 4294967294 || _bridges_fail \
            "expected VSOCKPORT 1-4294967294 in '$_entry', got '$_vsock_port'"
        case "$_seen" in
            *" $_host "*) _bridges_fail "expected each HOST once, got '$_host' twice" ;;
            *" =$_vsock_port "*) _bridges_fail \
                "expected each VSOCKPORT once, got '$_vsock_port' twice" ;;
        esac
        _seen="$_seen$_host =$_vsock_port "
        echo "$_host $_port $_vsock_port"
    done
    set +f
}

_bridges_fail() {
    echo "SANDBOX_EGRESS_BRIDGES: $*" >&2
    exit 2
}
