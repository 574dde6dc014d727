"""Egress: every connection the app makes to the outside, decided and audited.

proxy.EgressProxy     mitmproxy in-process, started and stopped by the runner
addon.EgressAddon     translates mitmproxy hooks into gate questions
gate.EgressGate       decide (sandbox.policy.egress_decision), bound, audit
budget.ByteBudgets    bytes out per destination per window
resolver.Resolver     name lookup, replaceable in tests
declared              names the operator maps to addresses (--egress-host)
state.prepare_state   the private CA and trust bundles
"""
