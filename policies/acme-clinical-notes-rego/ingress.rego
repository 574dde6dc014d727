# Ingress decisions for acme-clinical-notes, the twin of the YAML example:
# the same rules (data.acme.ingress, in rules.json), read the same way.
#
# Deny rules override allow rules. The first allow rule that matches the
# route and accepts the caller allows; otherwise the first allow rule that
# matched the route explains the refusal (401 without a token, 403 with
# one); otherwise the default applies.
package sandbox.ingress

import rego.v1

import data.sandbox.lib.paths

rules := data.acme.ingress.rules

route := concat(" ", [input.request.method, input.request.path])

decision := {
	"allow": false,
	"rule": "policy-data",
	"reason": concat("; ", _data_problems),
	"status": 403,
} if {
	count(_data_problems) > 0
} else := _deny_rule_decision if {
	_deny_index
} else := _allow_decision if {
	_allow_index
} else := _refusal_decision if {
	_refusal_index
} else := _default_decision

_data_problems := paths.problems([p | p := rules[_].paths[_]])

# --- which rules apply -----------------------------------------------------

route_matches(rule) if {
	_method_matches(rule)
	some pattern in rule.paths
	paths.matches(pattern, input.request.segments)
}

_method_matches(rule) if "*" in rule.methods

_method_matches(rule) if input.request.method in rule.methods

# A deny rule with claims applies only to callers whose token holds them.
deny_applies(rule) if {
	rule.effect == "deny"
	_claims_apply(rule)
}

_claims_apply(rule) if count(object.get(rule, "claims", [])) == 0

_claims_apply(rule) if {
	count(object.get(rule, "claims", [])) > 0
	input.identity != null
	count(claim_failures(rule)) == 0
}

accepts(rule) if object.get(rule, "anonymous", false) == true

accepts(rule) if {
	object.get(rule, "anonymous", false) == false
	input.identity != null
	count(claim_failures(rule)) == 0
}

# Each set is computed once per request; the decision takes its smallest
# index, so the order of the rules decides, as in the YAML engine.
_routed contains i if {
	rule := rules[i]
	route_matches(rule)
}

_deny_index := min({i | _routed[i]; deny_applies(rules[i])})

_allow_index := min({i | _routed[i]; rules[i].effect == "allow"; accepts(rules[i])})

_refusal_index := min({i | _routed[i]; rules[i].effect == "allow"})

# --- claims, compared with their JSON types ---------------------------------

# Index of each failed condition, so the first one explains the refusal.
claim_failures(rule) := {i |
	condition := object.get(rule, "claims", [])[i]
	not _condition_holds(condition, input.identity.claims)
}

_condition_holds(condition, claims) if {
	condition.equals_any
	value := claims[condition.claim]
	some accepted in condition.equals_any
	_same(value, accepted)
}

_condition_holds(condition, claims) if {
	"contains" in object.keys(condition)
	items := claims[condition.claim]
	is_array(items)
	some item in items
	_same(item, condition.contains)
}

# true is not 1, and "1" is not 1.
_same(left, right) if {
	type_name(left) == type_name(right)
	left == right
}

_describe(condition) := concat("", [
	"claim '", condition.claim, "' to contain ", _shown(condition.contains),
]) if {
	"contains" in object.keys(condition)
} else := concat("", [
	"claim '", condition.claim, "' to be one of ", _shown(condition.equals_any),
])

_claim_problem(condition) := concat("", [
	"it needs ", _describe(condition), " and the token has no such claim",
]) if {
	not condition.claim in object.keys(input.identity.claims)
} else := concat("", [
	"it needs ", _describe(condition), "; the token has ",
	_shown(input.identity.claims[condition.claim]),
])

_identity_problem(rule) := "it needs a verified bearer token" if {
	input.identity == null
} else := _claim_problem(rule.claims[min(claim_failures(rule))])

# Values as the YAML engine shows them: 'text', [1, 'a'], true. Never a
# double quote, which rego-cpp 1.5 does not escape in strings built at run
# time (its result would not be JSON). Reasons are built with concat: its
# sprintf wraps a string made by concat in double quotes.
_shown(value) := concat("", ["'", value, "'"]) if is_string(value)

else := concat("", ["[", concat(", ", [_scalar(item) | item := value[_]]), "]"]) if {
	is_array(value)
} else := _scalar(value)

_scalar(value) := concat("", ["'", value, "'"]) if is_string(value)

else := "True" if value == true

else := "False" if value == false

else := "None" if is_null(value)

else := sprintf("%v", [value]) if is_number(value)

else := type_name(value)

# --- the decisions ----------------------------------------------------------

_deny_rule_decision := {
	"allow": false,
	"rule": rules[_deny_index].name,
	"reason": concat("", ["rule '", rules[_deny_index].name, "' denies ", route]),
	"status": 403,
}

_allow_decision := object.union(
	{
		"allow": true,
		"rule": rules[_allow_index].name,
		"reason": concat("", ["rule '", rules[_allow_index].name, "' allows ", route]),
	},
	_max_body(rules[_allow_index]),
)

_max_body(rule) := {"max_body": rule.max_body} if {
	"max_body" in object.keys(rule)
} else := {}

_refusal_decision := {
	"allow": false,
	"rule": rule.name,
	"reason": concat("", [
		"rule '", rule.name, "' matches ", route, " but ", _identity_problem(rule),
	]),
	"status": _refusal_status,
} if {
	rule := rules[_refusal_index]
}

_refusal_status := 401 if {
	input.identity == null
} else := 403

_default_decision := {
	"allow": true,
	"rule": "default",
	"reason": concat("", ["no rule matches ", route, "; default allows"]),
} if {
	data.acme.ingress["default"] == "allow"
} else := {
	"allow": false,
	"rule": "default",
	"reason": concat("", ["no rule allows ", route]),
	"status": 403,
}
