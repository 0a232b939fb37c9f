"""`vxflow controller` (run the os-ken application) and `vxflow flows show|diff`."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Collection
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any

import click

from daemons.build import banner
from daemons.options import metrics_options
from flows.policy import DROP_LOG_MAX_RATE, DROP_LOG_RATE
from leases.cli_options import etcd_access, etcd_options, open_registry, operator_errors
from leases.controllers import advertised_target, member_id_problem, target_problem

if TYPE_CHECKING:
    from leases.model import Lease

log = logging.getLogger("controller")


def _stop(*_args: object) -> None:
    """SIGTERM: KeyboardInterrupt in the main green thread, where os-ken's manager stops the
    app cleanly. Python runs the handler in whichever green thread is current; raised in
    another one (a watchdog ping, a keepalive), os-ken's hub would only log it."""
    import greenlet
    from eventlet.hubs import get_hub

    current = greenlet.getcurrent()
    if current.parent is None:  # the main one
        raise KeyboardInterrupt
    main = current
    while main.parent is not None:
        main = main.parent
    get_hub().schedule_call_global(0, main.throw, KeyboardInterrupt)


def _check_member_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (problem := member_id_problem(value)):
        raise click.BadParameter(problem, ctx, param)
    return value


def _check_target(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (problem := target_problem(value)):
        raise click.BadParameter(problem, ctx, param)
    return value


@click.command()
@click.option("--listen", default="127.0.0.1", show_default=True,
              help="Address to accept OpenFlow connections on.")
@click.option("--port", default=6653, show_default=True, type=click.IntRange(1, 65535),
              help="OpenFlow port (TCP, or TLS with --ctl-privkey).")
@click.option("--audit-interval", default=60.0, show_default=True, type=click.FloatRange(0),
              envvar="VXFLOW_AUDIT_INTERVAL", show_envvar=True,
              help="Seconds in which every switch's table is read back once, one switch after another, "
                   "to repair drift (longer where the readbacks would fill over a quarter of the "
                   "time); 0 = off.")
@metrics_options("VXFLOW", None, "an ephemeral port, which this replica's etcd entry "
                 "names (`vxflow status` reads it)")
@click.option("--id", "member_id", envvar="VXFLOW_CONTROLLER_ID", show_envvar=True,
              callback=_check_member_id,
              help="This replica's id in the controller cluster.  [default: HOSTNAME:PORT]")
@click.option("--member-ttl", default=5, show_default=True, type=click.IntRange(2, 300),
              envvar="VXFLOW_MEMBER_TTL", show_envvar=True,
              help="Seconds this replica's membership lives unrenewed: its switches move to "
                   "the other replicas about this long after it dies.")
@click.option("--log-policy-drops", "log_policy_drops", type=click.IntRange(0, DROP_LOG_MAX_RATE),
              default=0, is_flag=False, flag_value=DROP_LOG_RATE, metavar="[RATE]",
              envvar="VXFLOW_LOG_POLICY_DROPS", show_envvar=True,
              help="Log every packet network policy drops (node, pod, direction, isolating "
                   f"policies, addresses and ports), RATE (without RATE: {DROP_LOG_RATE}) a "
                   "second per switch on average, in bursts of up to RATE (2 x RATE while "
                   "its meter is missing): the drops pass an OpenFlow meter of that rate and "
                   "burst before they reach the controller, which guards again per switch "
                   "and counts what it does not log; they still drop.  [default: 0, off]")
@click.option("--advertise", envvar="VXFLOW_ADVERTISE", show_envvar=True,
              callback=_check_target, metavar="tcp:IP:PORT",
              help="The target switches reach this replica on, published in etcd for the node "
                   "agents; needed when LISTEN is every address.  [default: tcp:LISTEN:PORT "
                   "(ssl: with TLS) when LISTEN is one address]")
# -- OpenFlow over TLS: os-ken's SSL listener (its --ctl-privkey, --ctl-cert, --ca-certs) --
@click.option("--ctl-privkey", type=click.Path(exists=True, dir_okay=False),
              envvar="VXFLOW_CTL_PRIVKEY", show_envvar=True,
              help="The controller's private key: OpenFlow over TLS on --port (plain TCP is "
                   "then not served).")
@click.option("--ctl-cert", type=click.Path(exists=True, dir_okay=False),
              envvar="VXFLOW_CTL_CERT", show_envvar=True,
              help="The controller's certificate (with --ctl-privkey and --ca-certs).")
@click.option("--ca-certs", type=click.Path(exists=True, dir_okay=False),
              envvar="VXFLOW_CA_CERTS", show_envvar=True,
              help="The CA every switch's certificate must be signed by; a switch's "
                   "certificate must also name the PublicIP its datapath-id claims.")
# -- end of the TLS options --
@etcd_options
def controller(listen: str, port: int, audit_interval: float, metrics_port: int | None,
               metrics_listen: str, member_id: str | None, member_ttl: int,
               log_policy_drops: int, advertise: str | None, ctl_privkey: str | None, ctl_cert: str | None,
               ca_certs: str | None, **etcd: Any) -> None:
    """Run the OpenFlow controller (the os-ken app `controller.app` under osken-manager).

    Equivalent to `osken-manager --ofp-listen-host LISTEN --ofp-tcp-listen-port PORT
    controller.app` with FLANNELD_ETCD_* set (with TLS: `--ofp-ssl-listen-port PORT
    --ctl-privkey KEY --ctl-cert CERT --ca-certs CA`). Switches must connect with
    OpenFlow 1.4 and a datapath-id set by `vxflow bootstrap`.

    Several replicas on one etcd prefix form a cluster: each registers under
    <prefix>/vxflow/controllers/ (nodes' agents connect their switches to every
    replica), each switch is mastered by one replica and fails over to the others
    when it dies (OpenFlow roles with generation_ids from etcd fence a replica that
    fell behind). One replica alone masters every switch.
    """
    from controller.options import CONF

    log.info(banner("controller"))
    tls = [ctl_privkey, ctl_cert, ca_certs]
    if any(tls) and not all(tls):
        raise click.UsageError("OpenFlow TLS needs all of --ctl-privkey, --ctl-cert, --ca-certs")
    listener = ["--ofp-tcp-listen-port", str(port)]
    if all(tls):
        listener = ["--ofp-ssl-listen-port", str(port), "--ctl-privkey", ctl_privkey,
                    "--ctl-cert", ctl_cert, "--ca-certs", ca_certs]  # fmt: skip
    etcd_access(etcd)  # inconsistent TLS/credential options: a usage error now, not in the app
    if not advertise and not advertised_target(listen, port):
        raise click.UsageError(f"listening on every address ({listen!r}): give --advertise "
                               "tcp:IP:PORT, the target the nodes' switches reach this replica on")  # fmt: skip
    for name, value in etcd.items():
        CONF.set_default(f"vxflow_{name}", value)
    CONF.set_default("vxflow_audit_interval", audit_interval)
    CONF.set_default("vxflow_metrics_port", metrics_port)
    CONF.set_default("vxflow_metrics_listen", metrics_listen)
    CONF.set_default("vxflow_controller_id", member_id or "")
    CONF.set_default("vxflow_member_ttl", member_ttl)
    CONF.set_default("vxflow_advertise", advertise or "")
    CONF.set_default("vxflow_log_policy_drops", log_policy_drops)
    # read before importing os-ken's manager, which sets the root logger to DEBUG on import
    level = logging.getLogger().getEffectiveLevel()
    signal.signal(signal.SIGTERM, _stop)  # os-ken's manager stops cleanly on KeyboardInterrupt
    from os_ken.cmd import manager  # monkey-patches for eventlet: only when really running

    manager.main(
        args=[
            "--ofp-listen-host", listen,
            *listener,
            "--nouse-stderr",  # vxflow's own handler already logs to stderr
            "--default-log-level", str(level),
            "controller.app",
        ],
        prog="vxflow controller",
    )


@click.group()
def flows() -> None:
    """The flows a node's br-int must hold, and how a live switch differs."""


def _routed_directly(peer: Lease, reachable: Collection[IPv4Address | IPv6Address]) -> str:
    """The subnets of `peer` routed directly: IPv4's, and IPv6's via its PublicIPv6."""
    routed = [str(peer.subnet)] if peer.public_ip in reachable else []
    if peer.public_ipv6 in reachable:
        routed.append(f"{peer.ipv6_subnet} via {peer.public_ipv6}")
    return ", ".join(routed)


def _desired(etcd: dict[str, Any], node: IPv4Address):
    """The node's desired table (flows and the services' groups), from etcd."""
    from flows.compiler import compile_table
    from flows.direct import direct_leases
    from flows.services import service_plan
    from leases.health import ready_only

    with open_registry(**etcd) as registry:
        snap = registry.snapshot()
        config = registry.require_config(snap)
    own = snap.lease_for_public_ip(node)
    if own is None:
        click.echo(f"# {node} holds no valid lease: only the table-miss drops", err=True)
    unready = snap.unready()  # the health checks' verdicts (a DOWN node needs the switches)
    plan = service_plan(snap.vxflow, (ready_only(s, unready) for s in snap.services))
    reachable = snap.direct().get(node)
    table = compile_table(config, snap.leases, snap.endpoints, node, plan, snap.policies,
                          snap.namespaces, reachable)
    if config.backend.direct_routing:  # which peers the direct routes (flows/direct.py) serve
        peers = [f"{p.public_ip} ({_routed_directly(p, reachable or frozenset())})"
                 for p in direct_leases(config, own, snap.leases, reachable)]  # fmt: skip
        click.echo(f"# DirectRouting: direct to {', '.join(peers) or 'no peer'}; VXLAN to the "
                   "rest", err=True)  # fmt: skip
    return table


def _ordered(flows):
    return sorted(flows, key=lambda f: (f.table, -f.priority, str(f.match), f.cookie))


node_option = click.option("--node", required=True, type=IPv4Address, metavar="PUBLIC_IP",
                           help="The node, by its PublicIP (underlay address).")


@flows.command("show")
@node_option
@etcd_options
@operator_errors
def show(node: IPv4Address, **etcd: Any) -> None:
    """Print the flows NODE's br-int must hold, computed from etcd (ovs-ofctl syntax), then
    the services' groups (ovs-ofctl add-group syntax); backends unready by their service's
    health check are left out, as the controller does."""
    from flows.flow import to_ofctl
    from flows.groups import group_to_ofctl

    table = _desired(etcd, node)
    for flow in _ordered(table):
        click.echo(to_ofctl(flow))
    for group in table.groups:
        click.echo(group_to_ofctl(group))


@flows.command("diff")
@node_option
@click.option("--switch", "target", required=True, metavar="unix:PATH|tcp:HOST:PORT",
              help="The live switch, e.g. unix:/var/run/openvswitch/br-int.mgmt.")
@etcd_options
@operator_errors
def diff(node: IPv4Address, target: str, **etcd: Any) -> None:
    """Show how the live switch differs from NODE's desired flows and groups.

    `+` lines are missing on the switch (or wrong there), `-` lines are on the
    switch but not desired. Affinity entries the switch learned itself are
    not compared. Exit status 0 if equal, 1 if they differ.
    """
    from controller.ofclient import read_table
    from flows.diff import diff_flows
    from flows.flow import to_ofctl
    from flows.groups import diff_groups, group_to_ofctl
    from flows.services import is_learned

    desired = _desired(etcd, node)
    try:
        live, live_groups = read_table(target)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read flows from {target}: {exc}") from exc
    live = [f for f in live if not is_learned(f)]
    d = diff_flows(live, desired)
    g = diff_groups(live_groups, desired.groups)
    for flow in _ordered(d.delete):
        click.echo(f"- {to_ofctl(flow)}")
    stale = {f.key for f in d.add}
    for flow in _ordered(f for f in live if f.key in stale):
        click.echo(f"- {to_ofctl(flow)}")
    for flow in _ordered(d.add):
        click.echo(f"+ {to_ofctl(flow)}")
    have = {x.group_id: x for x in live_groups}
    for group in (*g.delete, *(have[x.group_id] for x in g.modify)):
        click.echo(f"- {group_to_ofctl(group)}")
    for group in (*g.add, *g.modify):
        click.echo(f"+ {group_to_ofctl(group)}")
    click.echo(f"# {len(live)} flows on the switch, {len(desired)} desired, {len(d)} differ; "
               f"{len(live_groups)} groups, {len(desired.groups)} desired, {len(g)} differ",
               err=True)  # fmt: skip
    sys.exit(1 if d or g else 0)
