"""hq-exec-server: the per-user, per-host daemon that runs one user's jobs.

``runner`` holds every fork/exec/kill/wait call, ``service`` is the daemon (socket, protocol,
events, idle exit) and ``main`` the ``hq-exec-server`` program with its ``--bridge``, through
which the user-server talks to the daemon. doc/exec-server.md describes the whole.
"""
