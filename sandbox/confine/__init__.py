"""Confinement of the app the sandbox starts, so the sandbox is its only way out.

The app is started through a small launcher (``python -m sandbox.confine``)
that, before it executes the app's command, in this order:

1. drops to the app's own user and group, when asked and run as root, so the
   app cannot touch the sandbox's files (audit log, egress CA key);
2. sets ``no_new_privs``, so nothing the app executes gains privileges;
3. applies a Landlock ruleset (:mod:`sandbox.confine.landlock`): TCP connect
   only to the egress proxy's port, TCP bind only to the app's own port, and,
   where the kernel scopes them, no signals or abstract unix sockets outside
   the app's own processes (Landlock also forbids ptrace of the sandbox);
4. installs a seccomp filter (:mod:`sandbox.confine.seccomp`) that lets the
   app create only unix, netlink-route and TCP sockets, so UDP, vsock, raw
   and packet sockets, which Landlock does not cover, are refused too.

Each step either applies or stops the launch: the app is never executed
less confined than asked.
"""
