"""Plumbing every daemon and harness shares, at the bottom of the layers.

`leases/`, `ovsdb/`, `controller/` and the CLI in `vxflow/` import from here,
never the other way round: the HTTP endpoint (`httpd`), the options the
daemons have in common (`options`) and stopping the child processes we
started (`processes`).
"""
