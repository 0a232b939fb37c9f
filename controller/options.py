"""The controller's options, registered on os-ken's oslo.config object.

`osken-manager` parses its command line before it imports applications, so
these are config-file options (section [DEFAULT]), whose defaults come from
the same environment variables as every other vxflow/flanneld command:

    FLANNELD_ETCD_ENDPOINTS  etcd client URLs      (default http://127.0.0.1:2379)
    FLANNELD_ETCD_PREFIX     flannel network prefix (default /coreos.com/network)
    FLANNELD_ETCD_CAFILE, FLANNELD_ETCD_CERTFILE, FLANNELD_ETCD_KEYFILE,
    FLANNELD_ETCD_USERNAME, FLANNELD_ETCD_PASSWORD   etcd TLS and credentials
    VXFLOW_AUDIT_INTERVAL    seconds per round of table audits (default 60, 0 = off)
    VXFLOW_METRICS_PORT      metrics (and status) port (default: an ephemeral port, which
                             the replica's etcd entry names; 0 = off)
    VXFLOW_METRICS_LISTEN    address it listens on (default 127.0.0.1)
    VXFLOW_CONTROLLER_ID     this replica's id (default <hostname>:<OpenFlow port>)
    VXFLOW_MEMBER_TTL        seconds a replica's membership lives unrenewed (default 5)
    VXFLOW_ADVERTISE         OpenFlow target switches reach it on (default tcp:<listen
                             host>:<port> when the listen host is one address)
    VXFLOW_ECHO_INTERVAL     seconds between echo requests to each switch; one that leaves 3
                             unanswered is disconnected (default 2: a switch whose node died
                             without closing the connection is gone within about 8 s)
    VXFLOW_SEND_BACKLOG_TOTAL  MiB that may wait to be sent to all slow switches together
                             (default 1024); past it the one with the most is disconnected
    VXFLOW_LOG_POLICY_DROPS  log network policy's drops, at most this many packets/s per
                             switch (default 0: off; controller/droplog.py)
    VXFLOW_SEND_STALL_TIMEOUT  seconds a switch may take nothing of a send before it is
                             disconnected (default 5: os-ken's own socket timeout)

`vxflow controller` sets them from its own command-line options.
"""

from __future__ import annotations

import os

from os_ken import cfg

from flows.policy import DROP_LOG_MAX_RATE, DROP_LOG_RATE
from leases.etcd_client import EtcdAccess
from leases.model import FLANNEL_DEFAULT_PREFIX
from leases.registry import DEFAULT_ENDPOINTS

CONF = cfg.CONF
DEFAULT_MEMBER_TTL = 5


def _float_opt(name: str, env: str, default: str, minimum: float, help: str) -> cfg.FloatOpt:
    """A number option whose default comes from the environment variable `env`."""
    return cfg.FloatOpt(name, default=float(os.environ.get(env, default)), min=minimum, help=help)


OPTS = [
    cfg.StrOpt(
        "vxflow-etcd-endpoints",
        default=os.environ.get("FLANNELD_ETCD_ENDPOINTS", DEFAULT_ENDPOINTS),
        help="Comma-separated etcd client URLs (env FLANNELD_ETCD_ENDPOINTS).",
    ),
    cfg.StrOpt(
        "vxflow-etcd-prefix",
        default=os.environ.get("FLANNELD_ETCD_PREFIX", FLANNEL_DEFAULT_PREFIX),
        help="etcd prefix of the flannel network (env FLANNELD_ETCD_PREFIX).",
    ),
    *[
        cfg.StrOpt(
            f"vxflow-etcd-{name}",
            default=os.environ.get(f"FLANNELD_ETCD_{name.upper()}") or None,
            secret=name == "password",
            help=f"etcd {name} (env FLANNELD_ETCD_{name.upper()}).",
        )
        for name in ("cafile", "certfile", "keyfile", "username", "password")
    ],
    _float_opt(
        "vxflow-audit-interval", "VXFLOW_AUDIT_INTERVAL", "60", 0,
        "Seconds in which every switch's table is read back once, one switch after another, "
        "to repair drift (longer where the readbacks would fill over a quarter of the "
        "time); 0 = off.",
    ),
    cfg.IntOpt(
        "vxflow-metrics-port",
        # unset (or empty, as click reads it): None, an ephemeral port, so that two
        # replicas on one host never collide
        default=int(os.environ["VXFLOW_METRICS_PORT"]) if os.environ.get("VXFLOW_METRICS_PORT")
        else None,
        min=0,
        max=65535,
        help="Serve Prometheus metrics (and /status) on METRICS_LISTEN:PORT; 0 = off; unset: "
        "an ephemeral port, named in this replica's etcd entry.",
    ),
    cfg.StrOpt(
        "vxflow-metrics-listen",
        default=os.environ.get("VXFLOW_METRICS_LISTEN", "127.0.0.1"),
        help="Address the metrics and status endpoint listens on.",
    ),
    cfg.StrOpt(
        "vxflow-controller-id",
        default=os.environ.get("VXFLOW_CONTROLLER_ID", ""),
        help="This replica's id in the controller cluster (default <hostname>:<port>).",
    ),
    cfg.IntOpt(
        "vxflow-member-ttl",
        default=int(os.environ.get("VXFLOW_MEMBER_TTL", str(DEFAULT_MEMBER_TTL))),
        min=2,
        max=300,
        help="Seconds this replica's membership lives without renewal; its switches fail "
        "over to the other replicas within about this long after it dies.",
    ),
    _float_opt(
        "vxflow-echo-interval", "VXFLOW_ECHO_INTERVAL", "2", 0.5,
        "Seconds between echo requests to each switch; a switch that leaves 3 unanswered "
        "is disconnected (os-ken's own default is 15 s and never disconnects).",
    ),
    _float_opt(
        "vxflow-send-backlog-total", "VXFLOW_SEND_BACKLOG_TOTAL", "1024", 0.001,
        "MiB that may wait to be sent to all slow switches together (each holds at most "
        "64); past it the switch with the most waiting is disconnected (it resyncs).",
    ),
    cfg.IntOpt(
        "vxflow-log-policy-drops",
        default=int(os.environ.get("VXFLOW_LOG_POLICY_DROPS") or "0"),
        min=0,
        max=DROP_LOG_MAX_RATE,
        help="Log each packet network policy drops, one line each, this many packets/s per "
        "switch on average, in bursts of up to as many (its meter; the controller's own guard "
        f"allows twice as many while the meter is missing); 0 = off (`vxflow controller "
        f"--log-policy-drops` alone: {DROP_LOG_RATE}).",
    ),
    _float_opt(
        "vxflow-send-stall-timeout", "VXFLOW_SEND_STALL_TIMEOUT", "5", 0.1,
        "Seconds a switch may take nothing of a send (its socket never drains) before "
        "it is disconnected (it resyncs when it reconnects); os-ken's socket timeout.",
    ),
    cfg.StrOpt(
        "vxflow-advertise",
        default=os.environ.get("VXFLOW_ADVERTISE", ""),
        help="OpenFlow target (tcp:IP:PORT) switches reach this replica on, published for "
        "node agents (default: the listen address and port, when that is one address).",
    ),
]

CONF.register_opts(OPTS)


def etcd_access() -> EtcdAccess:
    """The etcd TLS files and credentials the controller was given."""
    return EtcdAccess(
        cafile=CONF.vxflow_etcd_cafile,
        certfile=CONF.vxflow_etcd_certfile,
        keyfile=CONF.vxflow_etcd_keyfile,
        username=CONF.vxflow_etcd_username,
        password=CONF.vxflow_etcd_password,
    )
