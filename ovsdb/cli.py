"""`vxflow bootstrap` and `vxflow agent`: the node side, with flanneld's flags and environment.

Precedence for every setting: command-line flag, then its FLANNELD_*
variable, then `--sysconfig FILE` (the old /etc/sysconfig/flanneld), then the
default. PublicIP: `--public-ip`, else the address of `--iface`, else of the
interface of the default route (as flanneld chooses).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from cni.client import DEFAULT_SOCKET
from cni.config import DEFAULT_DATA_DIR
from daemons.build import banner
from daemons.options import metrics_options
from flows.ports import vtep_mac_for
from leases.cli_options import etcd_options, etcd_params, open_registry, operator_errors
from leases.config import parse_config
from leases.etcd_client import parse_endpoints
from leases.keys import Keys
from leases.liveness import DEFAULT_TTL as DEFAULT_LIVENESS_TTL
from leases.liveness import MAX_TTL as MAX_LIVENESS_TTL
from leases.model import LEASE_TTL_SECONDS, RENEW_MARGIN_SECONDS, Lease, NetworkConfig
from leases.registry import Registry
from leases.subnet_env import DEFAULT_SUBNET_ENV, previous_subnet
from ovsdb import idl as ovsidl
from ovsdb.bootstrap import (
    DATAPATH_TYPES,
    DEFAULT_BRIDGE,
    DEFAULT_CONTROLLER,
    TUNNEL_KEYS,
    BootstrapError,
    BootstrapOptions,
    SslSpec,
    controller_targets,
)
from ovsdb.bootstrap import (
    bootstrap as converge_node,
)
from ovsdb.iproute import IprouteError, address_of, default_route_interface
from ovsdb.migrate import (
    DEFAULT_CNI_BRIDGE,
    DEFAULT_CNI_CONF_DIR,
    DEFAULT_CNI_NETWORKS_DIR,
    DEFAULT_STATE_FILE,
    Migration,
    Record,
    Run,
    Settings,
    StepFailed,
    observe,
    plan,
    read_record,
    remove_leftovers,
)
from ovsdb.sysconfig import SysconfigError, read_sysconfig

log = logging.getLogger(__name__)


# The OVS SSL table (ovs-vsctl set-ssl KEY CERT CA) for `ssl:` controller targets
_SSL_OPTIONS = (
    ("privkey", "This switch's private key for OpenFlow over TLS (OVS SSL table)."),
    ("cert", "This switch's certificate, naming its PublicIP (`vxflow pki node`)."),
    ("ca-cert", "The CA that signed the controller's certificate."),
)


def _flanneld_options() -> list[Callable[..., Any]]:
    """Where a node's flanneld settings come from, and its OVSDB: the options `bootstrap`,
    `agent` and `migrate` share (flanneld's names)."""
    return [
        click.option("--sysconfig", type=click.Path(dir_okay=False, path_type=Path),
                     help="Read FLANNEL_ETCD[_ENDPOINTS], FLANNEL_ETCD_KEY/_PREFIX and "
                          "FLANNEL_OPTIONS (with its -etcd-cafile ... -etcd-password flags) "
                          "from an /etc/sysconfig/flanneld-style file (flags and FLANNELD_* "
                          "variables win)."),
        click.option("--public-ip", envvar="FLANNELD_PUBLIC_IP", show_envvar=True,
                     help="This node's underlay address (VXLAN local_ip, the lease's PublicIP). "
                          "Default: the address of --iface."),
        click.option("--iface", envvar="FLANNELD_IFACE", show_envvar=True,
                     help="Interface whose address is the PublicIP. "
                          "Default: the interface of the default route."),
        click.option("--subnet-file", envvar="FLANNELD_SUBNET_FILE", show_envvar=True,
                     type=click.Path(dir_okay=False, path_type=Path),
                     default=DEFAULT_SUBNET_ENV, show_default=True,
                     help="flannel's subnet.env (written by the agent; its subnet is asked "
                          "for again on restart)."),
        click.option("--ovsdb", default=ovsidl.DEFAULT_OVSDB, show_default=True,
                     envvar="VXFLOW_OVSDB", show_envvar=True, help="OVSDB server to manage."),
    ]  # fmt: skip


def _with_options(f: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    """`f` decorated with `options` (listed in the order --help shows them) and etcd's."""
    for option in reversed(options):
        f = option(f)
    return etcd_options(f)


def node_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options `bootstrap` and `agent` share (flanneld's names where flanneld has one)."""
    options = [
        *_flanneld_options(),
        click.option("--bridge", default=DEFAULT_BRIDGE, show_default=True,
                     help="Integration bridge name."),
        click.option("--controller", "controllers", multiple=True,
                     help="OpenFlow controller target (repeatable). The controller replicas "
                          f"registered in etcd are added to these.  [default: {DEFAULT_CONTROLLER} "
                          "when none is given and etcd lists no replica; ssl:IP:PORT targets need "
                          "--ssl-privkey/--ssl-cert/--ssl-ca-cert]"),
        *[click.option(f"--ssl-{name}", type=click.Path(exists=True, dir_okay=False,
                                                          resolve_path=True),
                       envvar=f"VXFLOW_SSL_{name.replace('-', '_').upper()}", show_envvar=True,
                       help=text)
          for name, text in _SSL_OPTIONS],
        click.option("--datapath-type", type=click.Choice(DATAPATH_TYPES), default="auto",
                     show_default=True,
                     help="auto: system if the openvswitch kernel module is loaded, else netdev."),
        click.option("--tunnel-key", type=click.Choice(TUNNEL_KEYS), default="flow",
                     show_default=True,
                     help="VXLAN key: flow (the controller sets the VNI per flow) or the "
                          "config's VNI pinned on the port."),
    ]  # fmt: skip
    return _with_options(f, options)


def _apply_sysconfig(ctx: click.Context, params: dict[str, Any]) -> None:
    """Fill settings still at their default from --sysconfig, validated like the flags."""
    path = params.get("sysconfig")
    if path is None:
        return
    sysconfig = read_sysconfig(path)
    for word in sysconfig.ignored:
        log.warning("%s: FLANNEL_OPTIONS %r is not used by vxflow", path, word)
    for name, value in sysconfig.values.items():
        if name not in params or ctx.get_parameter_source(name) not in (
            ParameterSource.DEFAULT,
            None,
        ):
            continue
        if name == "etcd_endpoints":
            parse_endpoints(value)
        elif name == "etcd_prefix":
            Keys(value)
        params[name] = value.lower() in ("true", "1") if name == "ip_masq" else value
        log.info("%s: %s=%s", path, name, "***" if name == "etcd_password" else params[name])


def _public_address(
    given: str | None, iface: str | None, version: int
) -> tuple[IPv4Address | IPv6Address | None, str | None]:
    """The flag's address, else the first one of --iface (or of the default route's
    interface) in that family; and the interface looked at."""
    if given:
        flag = "--public-ip" if version == 4 else "--public-ipv6"
        try:
            address = ip_address(given)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=flag) from exc
        if address.version != version:
            raise click.BadParameter(f"{given} is not an IPv{version} address", param_hint=flag)
        return address, iface
    iface = iface or default_route_interface()
    return (address_of(iface, version=version) if iface else None), iface


def resolve_public_ipv6(public_ipv6: str | None, iface: str | None) -> IPv6Address | None:
    """--public-ipv6, else the first global IPv6 address of --iface (or of the default
    route's interface), else None: a dual-stack config then gets an IPv4-only lease."""
    address, _ = _public_address(public_ipv6, iface, 6)
    return address if isinstance(address, IPv6Address) else None


def resolve_public_ip(public_ip: str | None, iface: str | None) -> IPv4Address:
    address, iface = _public_address(public_ip, iface, 4)
    if iface is None and address is None:
        raise click.UsageError("no --public-ip, no --iface and no default route to pick one from")
    if not isinstance(address, IPv4Address):
        raise click.UsageError(f"interface {iface} has no IPv4 address to use as PublicIP")
    return address


def node_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """One clear line and exit status 1 for the failures an operator can fix."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (ovsidl.OvsdbUnavailable, BootstrapError, IprouteError, SysconfigError) as exc:
            raise click.ClickException(str(exc)) from exc
        except ValueError as exc:  # invalid sysconfig values, PublicIP rejected by the registry
            raise click.ClickException(str(exc)) from exc

    return operator_errors(wrapper)


def _options(params: dict[str, Any]) -> BootstrapOptions:
    files = [params["ssl_privkey"], params["ssl_cert"], params["ssl_ca_cert"]]
    if any(files) and not all(files):
        raise click.UsageError("OpenFlow TLS needs all of --ssl-privkey, --ssl-cert, --ssl-ca-cert")
    if not all(files) and any(t.startswith("ssl:") for t in params["controllers"]):
        raise click.UsageError("an ssl: controller needs --ssl-privkey, --ssl-cert, --ssl-ca-cert")
    return BootstrapOptions(
        bridge=params["bridge"],
        datapath_type=params["datapath_type"],
        tunnel_key=params["tunnel_key"],
        ssl=SslSpec(*files) if all(files) else None,
    )


def _flag_config(
    network: str, subnet_len: int, vni: int, port: int, mtu: int | None
) -> NetworkConfig:
    backend: dict[str, Any] = {"Type": "vxlan", "VNI": vni, "Port": port}
    if mtu is not None:
        backend["MTU"] = mtu
    return parse_config(
        json.dumps({"Network": network, "SubnetLen": subnet_len, "Backend": backend})
    )


@click.command()
@node_options
@click.option("--network", help="Overlay Network (CIDR): take the config from flags, not etcd.")
@click.option("--vni", type=int, default=1, show_default=True, help="With --network: the VNI.")
@click.option("--vxlan-port", type=int, default=8472, show_default=True,
              help="With --network: VXLAN UDP port (Backend.Port).")  # fmt: skip
@click.option("--mtu", type=int, help="With --network: overlay MTU (Backend.MTU).")
@click.option("--subnet", help="This node's subnet (CIDR). Default: the lease in etcd "
              "holding --public-ip, else FLANNEL_SUBNET of --subnet-file.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the changes without making them.")
@click.pass_context
@node_errors
def bootstrap(ctx: click.Context, **params: Any) -> None:
    """Converge the integration bridge (and the gateway's address and route) once, and exit.

    Prints one line per change made ("changed: ..."; with --dry-run, per change it
    would make: "would change: ..."), or "BRIDGE: no change" when the node is
    already right.
    """
    _apply_sysconfig(ctx, params)
    public_ip = resolve_public_ip(params["public_ip"], params["iface"])
    registry = None
    if params["network"]:
        subnet_len = IPv4Network(params["subnet"]).prefixlen if params["subnet"] else 24
        config = _flag_config(params["network"], subnet_len, params["vni"],
                              params["vxlan_port"], params["mtu"])  # fmt: skip
    else:
        registry = open_registry(**etcd_params(params))
        config = registry.get_config()
    if params["subnet"]:
        subnet = IPv4Network(params["subnet"])
    else:
        subnet = _lease_subnet(registry, public_ip) or previous_subnet(params["subnet_file"])
        if subnet is None:
            raise click.UsageError(
                f"no --subnet, no lease for {public_ip} in etcd and no {params['subnet_file']}"
            )
    lease = Lease(subnet=subnet, public_ip=public_ip, vni=config.backend.vni,
                  vtep_mac=vtep_mac_for(public_ip))  # fmt: skip
    snap = registry.snapshot() if registry is not None else None
    targets = controller_targets(params["controllers"], snap.members if snap else ())
    # the ServiceNetwork's route: known from etcd only (from flags, leave it as it is)
    service_routes = None
    if snap is not None:
        vx = snap.vxflow
        service_routes = tuple(n for n in (vx.service_network, vx.service_network6) if n)
    idl = ovsidl.connect(params["ovsdb"])
    try:
        changes = converge_node(idl, config, lease, targets, _options(params),
                                dry_run=params["dry_run"], service_routes=service_routes)  # fmt: skip
    finally:
        idl.close()
    prefix = "would change: " if params["dry_run"] else "changed: "
    for line in changes:
        click.echo(prefix + line)
    if not changes:
        click.echo(f"{params['bridge']}: no change")


def _lease_subnet(registry, public_ip: IPv4Address) -> IPv4Network | None:
    if registry is None:
        return None
    return next(
        (lease.subnet for lease in registry.list_leases() if lease.public_ip == public_ip), None
    )


@click.command()
@node_options
@click.option("--public-ipv6", envvar="FLANNELD_PUBLIC_IPV6", show_envvar=True,
              help="This node's IPv6 underlay address, the lease's PublicIPv6 when the config "
                   "has EnableIPv6. Default: the first global IPv6 address of --iface; none: "
                   "an IPv4-only lease.")  # fmt: skip
@click.option("--ip-masq", envvar="FLANNELD_IP_MASQ", show_envvar=True, is_flag=True,
              help="Masquerade traffic from the overlay to outside it with flannel's rules "
                   "(nftables table `ip vxflow`, checked every 5 s and restored if changed); "
                   "recorded as FLANNEL_IPMASQ=true in the subnet file. Without it, a table "
                   "left by an earlier run is removed.")  # fmt: skip
@click.option("--release-on-exit", is_flag=True,
              help="Give the lease back on SIGTERM (default: keep it, as flanneld does).")  # fmt: skip
@click.option("--subnet-lease-ttl", type=click.IntRange(min=3), default=LEASE_TTL_SECONDS,
              show_default=True, help="Seconds the etcd lease on this node's subnet lives "
                   "without renewal (flannel's is fixed at 24 h; shorter makes a dead node's "
                   "subnet free sooner).")  # fmt: skip
@click.option("--liveness-ttl", envvar="VXFLOW_LIVENESS_TTL", show_envvar=True,
              type=click.IntRange(min=1, max=MAX_LIVENESS_TTL), default=DEFAULT_LIVENESS_TTL,
              show_default=True, help="Seconds this node's liveness record in etcd outlives "
                   "the agent (renewed 4 times per TTL from a thread of its own): a node "
                   "whose record is gone and whose switch is connected to no controller is "
                   "down, and its backends leave every service. etcd grants at least 1.5 "
                   "election timeouts (2 s by default).")  # fmt: skip
@click.option("--subnet-lease-renew-margin", type=int, default=RENEW_MARGIN_SECONDS // 60,
              show_default=True, help="Renew the lease this many minutes before it expires.")  # fmt: skip
@click.option("--resync-interval", type=float, default=30.0, show_default=True,
              help="Seconds between full re-checks of the bridge and of etcd's endpoints.")  # fmt: skip
@click.option("--cni-socket", envvar="VXFLOW_CNI_SOCKET", show_envvar=True,
              default=DEFAULT_SOCKET, show_default=True,
              help="Serve the CNI plugin's calls here (root only), for the `vxflow` executable "
                   "that `vxflow-cni install` writes; '' serves none.")  # fmt: skip
@click.option("--flow-restore-timeout", type=click.FloatRange(min=0), default=10.0,
              show_default=True,
              help="Seconds a flow-restore-wait left set with an empty bridge is kept before "
                   "the agent clears it (while it is set, ovs-vswitchd connects to no "
                   "controller); a bridge whose flows were restored is cleared at once.")  # fmt: skip
@metrics_options("VXFLOW_AGENT", 0, "off: nothing in vxflow reads it, and Prometheus "
                 "needs a fixed port")
@click.pass_context
@node_errors
def agent(ctx: click.Context, **params: Any) -> None:
    """Run the node agent: lease, bridge bootstrap, subnet.env, pod endpoints in etcd.

    Pod ports: Interfaces on the bridge with external_ids attached-mac=<MAC>
    and vxflow-ip=<IPv4 in this node's subnet>. Stops on SIGTERM/SIGINT,
    keeping the lease unless --release-on-exit.

    It also keeps this node's liveness record (--liveness-ttl) and checks the
    pods here that are backends of a service with a HealthCheck, from this
    node, publishing each verdict in etcd (README, "Health checks").
    """
    from cni.server import CniServer
    from ovsdb.agent import Agent, AgentSettings  # the agent pulls in prometheus and tenacity

    log.info(banner("agent"))
    _apply_sysconfig(ctx, params)
    settings = AgentSettings(
        public_ip=resolve_public_ip(params["public_ip"], params["iface"]),
        public_ipv6=resolve_public_ipv6(params["public_ipv6"], params["iface"]),
        subnet_file=Path(params["subnet_file"]),
        ovsdb=params["ovsdb"],
        controllers=tuple(params["controllers"]),
        options=_options(params),
        ip_masq=bool(params["ip_masq"]),
        release_on_exit=params["release_on_exit"],
        resync_interval=params["resync_interval"],
        renew_margin=params["subnet_lease_renew_margin"] * 60,
        lease_ttl=params["subnet_lease_ttl"],
        liveness_ttl=params["liveness_ttl"],
        flow_restore_timeout=params["flow_restore_timeout"],
        metrics_port=params["metrics_port"],
        metrics_listen=params["metrics_listen"],
    )
    registry = open_registry(**etcd_params(params))
    # The CNI server lives exactly as long as the agent's run and shares nothing with its
    # loop (its own thread and OVSDB replica): composed here, the agent module needs no cni/.
    server = CniServer(Path(params["cni_socket"])) if params["cni_socket"] else None
    try:
        runner = Agent(settings, registry)
        runner.install_signal_handlers()
        if server is not None:
            server.start()
        ctx.exit(runner.run())
    finally:
        if server is not None:
            server.stop()
        registry.close()


def migrate_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """flanneld's settings, and where flannel's CNI side keeps the pods."""
    return _with_options(f, [
        *_flanneld_options(),
        click.option("--cni-bridge", default=DEFAULT_CNI_BRIDGE, show_default=True,
                     help="flannel's CNI bridge, whose veths are the pods."),
        click.option("--cni-conf-dir", type=click.Path(file_okay=False, path_type=Path),
                     default=DEFAULT_CNI_CONF_DIR, show_default=True,
                     help="Where the flannel CNI network's conflist is."),
        click.option("--cni-networks-dir", type=click.Path(file_okay=False, path_type=Path),
                     default=DEFAULT_CNI_NETWORKS_DIR, show_default=True,
                     help="host-local's store (a directory per network)."),
        click.option("--cni-socket", default=DEFAULT_SOCKET, show_default=True,
                     help="The agent's --cni-socket: the switched conflist's agentSocket, "
                          "where vxflow-cni has the agent serve its calls."),
        click.option("--cni-data-dir", type=click.Path(file_okay=False, path_type=Path),
                     default=DEFAULT_DATA_DIR, show_default=True,
                     help="vxflow-cni's records of its attachments: the switched conflist's "
                          "dataDir."),
        click.option("--flanneld-pid", type=click.IntRange(min=1),
                     help="The running flanneld's PID (checked: its command line names "
                          "flannel): the migration stops it (required without --dry-run)."),
        click.option("--start-agent", metavar="COMMAND",
                     help="Shell command that starts this node's `vxflow agent` with its "
                          "settings, e.g. `systemctl start vxflow-agent` (required without "
                          "--dry-run). A re-run of an interrupted migration runs it again "
                          "unless the agent it started is up: as `systemctl start`, it must "
                          "not start a second agent."),
        click.option("--start-flanneld", metavar="COMMAND",
                     help="Shell command that starts flanneld again, to roll back, e.g. "
                          "`systemctl start flanneld` (required without --dry-run). The "
                          "--rollback that finishes an interrupted undo (or rollback) may run "
                          "it again: as `systemctl start`, it must not start a second "
                          "flanneld."),
        click.option("--stop-agent", metavar="COMMAND",
                     help="Shell command that stops the agent --start-agent started, to roll "
                          "back, e.g. `systemctl stop vxflow-agent` (required without "
                          "--dry-run). The --rollback that finishes an interrupted undo (or "
                          "rollback) may run it again: as `systemctl stop`, it must succeed "
                          "with the agent stopped already."),
        click.option("--bridge", default=DEFAULT_BRIDGE, show_default=True,
                     help="The agent's integration bridge, where the pods' ports go."),
        click.option("--timeout", type=click.FloatRange(min=1), default=60.0,
                     show_default=True, help="Seconds to wait for flanneld to stop (and, "
                                             "undoing a failed fence, as long again for it "
                                             "to end before flanneld starts again), for the "
                                             "agent to be up and for the pods' endpoints."),
        click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path),
                     default=DEFAULT_STATE_FILE, show_default=True,
                     help="Where a migration records its plan, each step once done and the "
                          "node as it was (cni0, the pods, the CNI config): a re-run resumes "
                          "an interrupted migration at its first step not done, --rollback "
                          "undoes it; an undo of a failed step that was interrupted is not "
                          "resumed: --rollback finishes it. What an undo could not remove "
                          "from OVSDB (it did not answer) stays listed there: the next run or "
                          "--rollback removes it first."),
        click.option("--rollback", is_flag=True,
                     help="Return a migrated node to flannel, its pods running: put "
                          "flanneld's masquerade rules back (with ip-masq), start "
                          "flanneld (--start-flanneld), re-create cni0, stop the agent "
                          "(--stop-agent), remove vxflow's ip-masq table, delete its bridge, move the pods back, restore "
                          "the CNI config (from --state-file); a migration interrupted midway: "
                          "its steps done undone in reverse."),
        click.option("--dry-run", is_flag=True,
                     help="Check the node and print the plan, one line per step; change "
                          "nothing (not with --rollback)."),
    ])  # fmt: skip


@click.command()
@migrate_options
@click.pass_context
@node_errors
def migrate(ctx: click.Context, **params: Any) -> None:
    """Turn this flannel (vxlan) node into a vxflow node in place, its pods running.

    Reads flanneld's settings (flags, FLANNELD_* variables, --sysconfig), then checks
    that etcd and OVSDB answer, that etcd's lease for the subnet file's subnet is this
    node's, that the subnet file matches etcd's config, that flannel.<VNI> sends from
    the PublicIP, that the CNI bridge holds the gateway, and that every veth on it is
    one pod whose MAC (the bridge's FDB) and IP (its neighbour table) are known. A
    failed check is one line each, exit status 1, and nothing is changed; a dual-stack
    node (FLANNEL_IPV6_SUBNET in the subnet file, or a dual-stack lease) is refused so,
    in one line.

    Then it carries the plan out, one line per step: it stops flanneld (--flanneld-pid),
    takes its lease over (same key and subnet), runs --start-agent and waits for the
    agent's subnet file (its FLANNEL_IPMASQ must be flanneld's; with ip-masq, vxflow's
    nftables table is put in place before flanneld stops, and flanneld's FLANNEL-POSTRTG
    iptables rules are recorded in --state-file and removed once the agent is up), moves each pod's veth
    from the CNI bridge to br-int with its IP and MAC, waits for their endpoints,
    removes flannel.<VNI> and the CNI bridge, adds the pods' addresses that host-local's
    store lacks, and turns the flannel conflist into vxflow-cni's (same network name,
    so host-local's allocations stay; its agentSocket --cni-socket, its dataDir
    --cni-data-dir). With --dry-run it prints the plan and changes
    nothing.

    A step that fails is named with its reason, then it and every step before it are
    undone in reverse, one line each (the agent stopped with --stop-agent and its bridge
    deleted, the pods' veths back on the CNI bridge and told its MAC by a gratuitous
    ARP, flanneld started again with --start-flanneld: it takes its lease and
    flannel.<VNI> back), exit status 1.

    --state-file records the plan before the first step and again as each step is done
    (a temporary file renamed), and before a step changes them what its undo needs (the
    conflist's text, a veth's sysctls, the host-local files it adds, the agent's start):
    a run killed in a step, its change made but the step not recorded, is finished by a
    re-run (a conflist switched already is left as it is) and undone by --rollback. A re-run with the same settings while it holds an
    unfinished migration (the command was killed midway) resumes at the first step not
    done (--dry-run prints the steps left); --rollback reads it to return the node to
    flannel, its pods running, after a finished migration or an interrupted one. One
    killed while it undid a failed step is not resumed (one line, exit status 1):
    --rollback finishes the undo, each undo step completing what the killed one left
    half done (cni0 made but not yet addressed or up included), and may run
    --stop-agent and --start-flanneld again.
    """
    _apply_sysconfig(ctx, params)
    dry_run = params["dry_run"]
    if params["rollback"]:
        _rollback(params)
        return
    needed = ("flanneld_pid", "start_agent", "start_flanneld", "stop_agent")
    if not dry_run and not all(params[name] for name in needed):
        raise click.UsageError("without --dry-run, --flanneld-pid, --start-agent, "
                               "--start-flanneld and --stop-agent are required")  # fmt: skip
    settings = Settings(
        public_ip=resolve_public_ip(params["public_ip"], params["iface"]),
        subnet_file=Path(params["subnet_file"]),
        ovsdb=params["ovsdb"],
        cni_bridge=params["cni_bridge"],
        cni_conf_dir=params["cni_conf_dir"],
        cni_networks_dir=params["cni_networks_dir"],
        flanneld_pid=params["flanneld_pid"],
        state_file=params["state_file"],
        cni_socket=params["cni_socket"],
        cni_data_dir=params["cni_data_dir"],
    )
    run = Run(params["start_flanneld"], params["stop_agent"], params["flanneld_pid"],
              params["start_agent"], params["bridge"], timeout=params["timeout"])  # fmt: skip
    with open_registry(**etcd_params(params)) as registry:
        try:
            cleared = remove_leftovers(settings, click.echo, dry_run)
            if not cleared and settings.state_file.exists():  # a migration began: resume it
                migration = _resumed(settings, run, registry, read_record(settings.state_file),
                                     dry_run)  # fmt: skip
            else:
                obs = observe(settings, registry)
                result = plan(obs)
                if dry_run or not result.ok:
                    for line in result.lines():
                        click.echo(line)
                    ctx.exit(0 if result.ok else 1)
                migration = Migration.planned(settings, run, registry, obs, result, click.echo)
            if dry_run:
                return
            migration.carry_out()
        except StepFailed as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"migrated: {settings.public_ip} is a vxflow node")


def _resumed(settings: Settings, run: Run, registry: Registry, record: Record,
             dry_run: bool) -> Migration:  # fmt: skip
    """The migration `record` began, to be resumed at its first step not done (one line
    says so; with `dry_run` the steps left too)."""
    if record.finished:
        raise StepFailed(f"{settings.state_file} records a finished migration: this node is "
                         "a vxflow node (--rollback returns it to flannel)")  # fmt: skip
    if record.rolling_back:
        raise StepFailed(f"{settings.state_file} records the rollback of a failed step, "
                         "interrupted: --rollback finishes it (this node is neither a "
                         "flannel nor a vxflow node until then)")  # fmt: skip
    click.echo(f"resuming the migration recorded in {settings.state_file} at step "
               f"{record.done + 1}")  # fmt: skip
    if dry_run:
        for number, step in enumerate(record.steps[record.done:], record.done + 1):
            click.echo(step.line(number))
    return Migration(settings, run, registry, record, click.echo)


def _rollback(params: dict[str, Any]) -> None:
    """`vxflow migrate --rollback`: undo the migration --state-file records."""
    if params["dry_run"]:
        raise click.UsageError("--dry-run does not apply to --rollback")
    if not (params["start_flanneld"] and params["stop_agent"]):
        raise click.UsageError("--rollback needs --start-flanneld and --stop-agent")
    settings = Settings(
        public_ip=resolve_public_ip(params["public_ip"], params["iface"]),
        subnet_file=Path(params["subnet_file"]), ovsdb=params["ovsdb"],
        state_file=params["state_file"],
    )  # fmt: skip
    run = Run(params["start_flanneld"], params["stop_agent"], bridge=params["bridge"],
              timeout=params["timeout"])  # fmt: skip
    try:
        if not remove_leftovers(settings, click.echo):
            record = read_record(settings.state_file)
            with open_registry(**etcd_params(params)) as registry:
                Migration(settings, run, registry, record, click.echo).roll_back()
    except StepFailed as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rolled back: {settings.public_ip} is a flannel node")
