# Egress decisions for egress-example-rego: where the vendor's app may go.
#
# A CONNECT is asked with input.request null. A rule without "requests"
# lets the tunnel through untouched. A rule with "requests" answers
# "intercept": true, so the sandbox opens the tunnel's TLS and asks again
# for each request inside, with input.request set. A plain http:// request
# is asked once, with input.request set. Reasons are built with concat and
# hold no double quotes (see docs/rego.md on rego-cpp).
package sandbox.egress

import rego.v1

rules := data.egress.rules

destination := input.destination

authority := concat(":", [destination.host, format_int(destination.port, 10)])

decision := _tunnel_decision if {
	input.request == null
	_tunnel_index
} else := _request_decision if {
	input.request != null
	_request_index
} else := {
	"allow": false,
	"rule": "default",
	"reason": concat("", ["no rule in data.egress allows ", _what]),
}

_what := concat("", ["a connection to ", authority]) if input.request == null

_what := concat("", [
	input.request.method, " ", destination.scheme, "://", authority,
	input.request.path,
]) if input.request != null

# --- which rules apply -----------------------------------------------------

_destination_matches(rule) if {
	destination.host in rule.hosts
	destination.port in rule.ports
}

_request_matches(rule) if count(object.get(rule, "requests", [])) == 0

_request_matches(rule) if {
	allowed := rule.requests[_]
	input.request.method in allowed.methods
	startswith(input.request.path, allowed.path_prefix)
}

_intercepts(rule) := true if {
	count(object.get(rule, "requests", [])) > 0
} else := false

# The first matching rule decides, as in the YAML rules.
_matching contains i if {
	rule := rules[i]
	_destination_matches(rule)
}

_tunnel_index := min(_matching)

_request_index := min({i | _matching[i]; _request_matches(rules[i])})

# --- answers ---------------------------------------------------------------

_tunnel_decision := {
	"allow": true,
	"rule": rule.name,
	"reason": concat("", ["rule ", rule.name, " allows ", _what]),
	"intercept": _intercepts(rule),
} if {
	rule := rules[_tunnel_index]
}

_request_decision := {
	"allow": true,
	"rule": rule.name,
	"reason": concat("", ["rule ", rule.name, " allows ", _what]),
} if {
	rule := rules[_request_index]
}
