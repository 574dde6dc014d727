"""Confinement of the app the sandbox starts, so the sandbox is its only way out.

The app is started through a small launcher (``python -m sandbox.confine``)
that, before it executes the app's command, in this order:

1. enters the app's own network namespace, when given one
   (:mod:`sandbox.confine.netns`): only ``lo``, and the few sockets the
   sandbox put there;
2. drops to the app's own user and group, when asked and run as root, so the
   app cannot touch the sandbox's files (audit log, egress CA key);
3. sets ``no_new_privs``, so nothing the app executes gains privileges;
4. applies a Landlock ruleset (:mod:`sandbox.confine.landlock`): TCP connect
   only to the egress proxy's port, TCP bind only to the app's own port, and,
   where the kernel scopes them, no signals or abstract unix sockets outside
   the app's own processes (Landlock also forbids ptrace of the sandbox);
   skipped only on a kernel without Landlock's network rules, and only when
   step 1 applied, whose namespace then bounds the app's TCP;
5. installs a seccomp filter (:mod:`sandbox.confine.seccomp`) that lets the
   app create only unix, netlink-route and TCP sockets, so UDP, vsock, raw
   and packet sockets, which Landlock does not cover, are refused too, and
   refuses ``setns``.

Each step either applies or stops the launch: the app is never executed
less confined than asked.
"""
