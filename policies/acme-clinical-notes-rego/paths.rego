# Path patterns on the segments of a normalised path, as the YAML rules
# read them: "*" is one non-empty segment, "**" any number of segments
# (zero included), anything else must equal the segment. "/" has the
# segments [""], and a trailing slash adds an empty last segment.
#
# A pattern may hold one "**": Rego has no recursion, and one is all the
# rules need. problems names any pattern with more, so the policy refuses
# every request instead of guessing.
package sandbox.lib.paths

import rego.v1

# Segments of a pattern, split the way input.request.segments is split.
parts(pattern) := split(trim_prefix(pattern, "/"), "/")

matches(pattern, segments) if {
	ps := parts(pattern)
	not "**" in ps
	count(ps) == count(segments)
	every i, part in ps {
		segment_matches(part, segments[i])
	}
}

# The parts before "**" match the first segments, the parts after it the
# last ones, and "**" takes whatever lies between (possibly nothing).
matches(pattern, segments) if {
	ps := parts(pattern)
	some star, "**" in ps
	after := count(ps) - star - 1
	count(segments) >= star + after
	every i, part in array.slice(ps, 0, star) {
		segment_matches(part, segments[i])
	}
	every i, part in array.slice(ps, star + 1, count(ps)) {
		segment_matches(part, segments[(count(segments) - after) + i])
	}
}

segment_matches("*", segment) if segment != ""

segment_matches(part, segment) if {
	part != "*"
	part == segment
}

# Patterns this library cannot read.
problems(patterns) := {sprintf("pattern '%s' holds more than one '**'", [p]) |
	p := patterns[_]
	count([x | x := parts(p)[_]; x == "**"]) > 1
}
