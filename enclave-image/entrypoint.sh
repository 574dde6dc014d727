#!/bin/sh
# Starts the sandbox in front of the vendor's app. Every setting comes from the
# environment so one image serves the enclave and the compose stack; nothing is
# downloaded here: the image must start with no network at all.
set -eu

policy="${SANDBOX_POLICY:-/policy}"
upstream="${SANDBOX_UPSTREAM:-http://127.0.0.1:8081}"
listen="${SANDBOX_LISTEN:-0.0.0.0:8443}"
admin_listen="${SANDBOX_ADMIN_LISTEN:-127.0.0.1:9901}"
egress_listen="${SANDBOX_EGRESS_LISTEN:-127.0.0.1:3128}"
attestation="${SANDBOX_ATTESTATION:-nitro}"
state_dir="${SANDBOX_STATE_DIR:-/var/lib/sandbox/state}"
audit_log="${SANDBOX_AUDIT_LOG:-/var/lib/sandbox/audit/decisions.jsonl}"
app_command="${SANDBOX_APP_COMMAND:-}"
# UID:GID the app runs as; set by the confined targets, which start as root.
app_user="${SANDBOX_APP_USER:-}"

# Arguments given to this script (nitro-entrypoint.sh passes --egress-host)
# are kept, after the flags built here and before the app command.
set -- run \
    --policy "$policy" \
    --upstream "$upstream" \
    --listen "$listen" \
    --admin-listen "$admin_listen" \
    --egress-listen "$egress_listen" \
    --attestation "$attestation" \
    --state-dir "$state_dir" \
    --audit-log "$audit_log" \
    "$@"

if [ -n "${SANDBOX_OPA_URL:-}" ]; then
    set -- "$@" --opa-url "$SANDBOX_OPA_URL"
fi
if [ -n "${SANDBOX_EGRESS_APP_BUNDLE:-}" ]; then
    set -- "$@" --egress-app-bundle "$SANDBOX_EGRESS_APP_BUNDLE"
fi
if [ -n "$app_user" ]; then
    set -- "$@" --app-user "$app_user"
fi

if [ -z "$app_command" ]; then
    # The app runs elsewhere (its own container in docker-compose.yml).
    exec python -m sandbox "$@"
fi

# The app command is split on spaces and never globbed: an argument holding a
# space needs a wrapper script in the app folder.
# shellcheck disable=SC2086
set -f
exec python -m sandbox "$@" -- $app_command
