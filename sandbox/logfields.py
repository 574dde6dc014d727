"""Names of the fields of a decision, shared by the log line, the audit
record and the metrics, so that one name means one thing everywhere."""

EVENT = "event"
TIME = "time"
REQUEST_ID = "request_id"
DIRECTION = "direction"
SOURCE = "source"
ISSUER = "iss"
SUBJECT = "sub"
METHOD = "method"
PATH = "path"
DECISION = "decision"
ENFORCED = "enforced"
RULE = "rule"
REASON = "reason"
STATUS = "status"
LATENCY_MS = "latency_ms"
BYTES_IN = "bytes_in"

EVENT_DECISION = "decision"
DIRECTION_INGRESS = "ingress"
ALLOW = "allow"
DENY = "deny"

# Egress: where the app connects, and how much went each way.
HOST = "host"
PORT = "port"
ADDRESS = "address"
# declared, resolved or literal: how ADDRESS was found.
ADDRESS_SOURCE = "address_source"
SCHEME = "scheme"
BYTES_OUT = "bytes_out"
DURATION_MS = "duration_ms"
CUT = "cut"
DIRECTION_EGRESS = "egress"
# Written when an allowed egress exchange or tunnel ends, after its decision.
EVENT_EGRESS_END = "egress_end"
