"""Services and vxflow's config in the registry: validation with reason codes, the View's
events and snapshots (pure), and `vxflow services ...` against a real etcd."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from leases.config import ConfigError
from leases.etcd_server import EtcdServer
from leases.events import ServiceAdded, ServiceRemoved, VxflowConfigChanged
from leases.keys import KV, KeyKind, Keys
from leases.model import (
    Backend,
    FamilyConfig,
    HealthCheck,
    Lease,
    NetworkConfig,
    Service,
    ServicePort,
    VxflowConfig,
)
from leases.registry import Registry
from leases.services import (
    MAX_SERVICE_BYTES,
    check_service,
    parse_vxflow_config,
    resolve_services,
    service_flows,
    service_to_json,
    underlay_of,
    vxflow_config_to_json,
)
from leases.state import View, diff
from leases.validate import Rejection
from tests.emulation import ROOT_UNDERLAY_IP
from tests.test_leases_cli import as_typed, assert_operator_error, readme_block, run

KEYS = Keys("/atomic.io/network")
CONFIG = NetworkConfig(IPv4Network("10.20.0.0/16"))
VX = VxflowConfig(IPv4Network("10.96.0.0/16"))
WEB = {
    "Name": "web",
    "VIP": "10.96.0.10",
    "Ports": [{"Port": 80, "TargetPort": 8080}, {"Port": 53, "Protocol": "UDP"}],
    "Backends": [{"IP": "10.20.3.7", "Weight": 2}, {"IP": "10.20.1.5"}],
}


def kv(name: str, value: dict | str, rev: int = 5, create: int | None = None) -> KV:
    raw = value if isinstance(value, str) else json.dumps(value)
    return KV(KEYS.service(name), raw.encode(), create or rev, rev)


def judged(
    value: dict | str, name: str = "web", vx: VxflowConfig = VX, config: NetworkConfig = CONFIG
) -> Service | Rejection:
    return check_service(kv(name, value), name, config, vx)


# -- validation -------------------------------------------------------------------------


def test_a_service_parses_with_defaults_and_sorted_ports_and_backends() -> None:
    svc = judged(WEB)
    assert svc == Service(
        name="web",
        vip=IPv4Address("10.96.0.10"),
        ports=(ServicePort(80, "TCP", 8080), ServicePort(53, "UDP", 53)),
        backends=(Backend(IPv4Address("10.20.1.5"), 1), Backend(IPv4Address("10.20.3.7"), 2)),
        affinity_timeout=0,
        create_revision=5,
    )
    # the canonical value vxflow writes parses back to the same service
    assert judged(service_to_json(svc)) == svc
    sticky = judged({**WEB, "SessionAffinity": "ClientIP"})
    assert sticky.affinity_timeout == 10800  # Kubernetes' default
    assert (
        judged(
            {**WEB, "SessionAffinity": "ClientIP", "SessionAffinityTimeout": 30}
        ).affinity_timeout
        == 30
    )
    assert judged({**WEB, "Backends": []}).backends == ()  # valid: its traffic is dropped


def _without(obj: dict, field: str) -> dict:
    return {k: v for k, v in obj.items() if k != field}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({**WEB, "VIP": "10.97.0.10"}, "bad_vip"),  # outside the service range
        ({**WEB, "VIP": "10.20.9.9"}, "bad_vip"),  # inside the overlay
        ({**WEB, "VIP": "10.96.0.0"}, "bad_vip"),  # the range's network address
        ({**WEB, "VIP": "10.96.255.255"}, "bad_vip"),  # its last: the hairpin source
        ({**WEB, "VIP": "10.96.0.300"}, "bad_vip"),
        ({**WEB, "Backends": [{"IP": "10.21.0.5"}]}, "bad_backend"),  # outside the overlay
        ({**WEB, "Backends": [{"IP": "10.20.255.255"}]}, "bad_backend"),
        ({**WEB, "Backends": [{"IP": "10.20.1.5"}, {"IP": "10.20.1.5"}]}, "duplicate_backend"),
        ({**WEB, "Backends": [{"IP": "10.20.1.5", "Weight": 0}]}, "bad_weight"),
        ({**WEB, "Backends": [{"IP": "10.20.1.5", "Weight": 70000}]}, "bad_weight"),
        ({**WEB, "Ports": [{"Port": 80, "Protocol": "SCTP"}]}, "bad_protocol"),
        ({**WEB, "Ports": [{"Port": 0}]}, "bad_port"),
        ({**WEB, "Ports": [{"Port": 80, "TargetPort": 65536}]}, "bad_port"),
        ({**WEB, "Ports": []}, "bad_port"),
        ({**WEB, "Ports": [{"Port": 80}, {"Port": 80, "Protocol": "TCP"}]}, "duplicate_port"),
        ({**WEB, "Ports": [{"Port": p} for p in range(1, 258)]}, "too_many"),
        ({**WEB, "SessionAffinity": "Cookie"}, "bad_affinity"),
        ({**WEB, "SessionAffinityTimeout": 5}, "bad_affinity"),  # without ClientIP
        ({**WEB, "SessionAffinity": "ClientIP", "SessionAffinityTimeout": 86400}, "bad_affinity"),
        ({**WEB, "Name": "api"}, "bad_key"),  # differs from the key
        (_without(WEB, "VIP"), "missing_field"),
        ({**WEB, "Ports": "80"}, "wrong_type"),
        ("{oops", "bad_json"),
    ],
)
def test_a_bad_service_is_rejected_with_its_reason(value: dict | str, reason: str) -> None:
    result = judged(value)
    assert isinstance(result, Rejection), result
    assert (result.kind, result.reason) == (KeyKind.SERVICE, reason), result.detail
    assert result.key == KEYS.service("web") and result.detail


def test_service_names_and_the_missing_range() -> None:
    assert judged({**WEB, "Name": "Web"}, name="Web").reason == "bad_key"
    assert judged({**WEB, "Name": "web.default"}, name="web.default").name == "web.default"
    assert judged(WEB, vx=VxflowConfig()).reason == "no_service_network"


def test_the_older_service_keeps_a_contested_vip() -> None:
    old = judged(WEB)
    new = check_service(kv("api", {**WEB, "Name": "api"}, rev=9), "api", CONFIG, VX)
    for order in ((old, new), (new, old)):  # whatever the order they were seen in
        kept, rejected = resolve_services({KEYS.service(s.name): s for s in order})
        assert list(kept.values()) == [old]
        assert [(r.key, r.reason) for r in rejected] == [(KEYS.service("api"), "duplicate_vip")]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"ServiceNetwork": "10.20.128.0/17"}', "ServiceNetwork"),  # overlaps the overlay
        ('{"ServiceNetwork": "10.96.0.0/8"}', "ServiceNetwork"),  # more than 2**20 VIPs
        ('{"ServiceNetwork": "10.96.0.1/16"}', "ServiceNetwork"),  # host bits
        ('{"ServiceNetwork": "127.1.0.0/16"}', "ServiceNetwork"),
        ('{"ServiceNetwork": 7}', "ServiceNetwork"),
        ("[1]", "config"),
    ],
)
def test_a_bad_service_network_names_its_field(raw: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_vxflow_config(raw, CONFIG)
    assert err.value.field == field


def test_vxflow_config_parses_and_keeps_unknown_fields_out_of_the_way() -> None:
    assert parse_vxflow_config(
        '{"ServiceNetwork": "10.96.0.0/12", "Later": 1}', CONFIG
    ) == VX.__class__(IPv4Network("10.96.0.0/12"))
    assert parse_vxflow_config("{}", CONFIG) == VxflowConfig()


# -- the View ---------------------------------------------------------------------------


def config_kv(rev: int = 1) -> KV:
    raw = '{"Network": "10.20.0.0/16", "Backend": {"Type": "vxlan"}}'
    return KV(KEYS.config, raw.encode(), rev, rev)


def vx_kv(network: str, rev: int) -> KV:
    return KV(KEYS.vxflow_config, json.dumps({"ServiceNetwork": network}).encode(), rev, rev)


def test_the_view_reports_services_as_events_and_judges_them_again_with_the_range() -> None:
    view = View(KEYS).load([config_kv(), kv("web", WEB, rev=3)], 3)
    snap = view.snapshot()
    assert snap.services == ()  # no range yet
    assert [(r.key, r.reason) for r in snap.rejected] == [
        (KEYS.service("web"), "no_service_network")
    ]

    events, rejections, _ = view.apply({KEYS.vxflow_config: vx_kv("10.96.0.0/16", 4)}, 4)
    web = check_service(kv("web", WEB, rev=3), "web", CONFIG, VX)
    assert events == [
        VxflowConfigChanged(VxflowConfig(), VX, 4),
        ServiceAdded(web, 4),
    ]
    assert rejections == []

    # a contested VIP: the newcomer is rejected, the holder untouched
    events, rejections, _ = view.apply(
        {KEYS.service("api"): kv("api", {**WEB, "Name": "api"}, rev=5)}, 5
    )
    assert events == []
    assert [(r.key, r.reason) for r in rejections] == [(KEYS.service("api"), "duplicate_vip")]

    # a changed service: removed, then added
    changed = {**WEB, "Backends": [{"IP": "10.20.1.5"}]}
    events, _, _ = view.apply({KEYS.service("web"): kv("web", changed, rev=6, create=3)}, 6)
    new_web = check_service(kv("web", changed, rev=6, create=3), "web", CONFIG, VX)
    assert events == [ServiceRemoved(web, 6), ServiceAdded(new_web, 6)]

    # the holder goes: the other service takes the VIP
    events, _, _ = view.apply({KEYS.service("web"): None}, 7)
    api = check_service(kv("api", {**WEB, "Name": "api"}, rev=5), "api", CONFIG, VX)
    assert events == [ServiceRemoved(new_web, 7), ServiceAdded(api, 7)]

    # a range that no longer holds the VIP withdraws the service; an invalid one is kept out
    before = view.snapshot()
    events, _, _ = view.apply({KEYS.vxflow_config: vx_kv("10.97.0.0/16", 8)}, 8)
    assert [type(e) for e in events] == [VxflowConfigChanged, ServiceRemoved]
    assert diff(before, view.snapshot()) == events
    events, rejections, _ = view.apply({KEYS.vxflow_config: vx_kv("10.20.0.0/17", 9)}, 9)
    assert events == [] and [r.reason for r in rejections] == ["bad_config"]
    assert view.snapshot().vxflow == VxflowConfig(IPv4Network("10.97.0.0/16"))


def test_incremental_services_equal_a_full_rebuild() -> None:
    view = View(KEYS).load([config_kv()], 1)
    changes = [
        {KEYS.service("web"): kv("web", WEB, rev=2)},
        {KEYS.vxflow_config: vx_kv("10.96.0.0/16", 3)},
        {KEYS.service("api"): kv("api", {**WEB, "Name": "api", "VIP": "10.96.0.11"}, rev=4)},
        {KEYS.service("web"): None},
    ]
    for rev, change in enumerate(changes, 2):
        view.apply(change, rev)
        rebuilt = View(KEYS).load(view.kvs.values(), rev).snapshot()
        now = view.snapshot()
        assert (now.services, now.vxflow, now.rejected) == (
            rebuilt.services, rebuilt.vxflow, rebuilt.rejected,
        )  # fmt: skip


# -- the CLI against etcd -----------------------------------------------------------------

SEED = '{"Network": "10.20.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'


@pytest.mark.integration
def test_services_network_set_list_rm(etcd: EtcdServer, tmp_path: Path) -> None:
    with Registry(etcd.endpoint, "/atomic.io/network") as reg:
        reg.set_config(SEED)
    shown = run(etcd, "services", "network")
    assert shown.exit_code == 0 and "(none: no services)" in shown.stdout
    assert_operator_error(run(etcd, "services", "network", "10.20.0.0/24"), "overlaps the overlay")
    public = run(etcd, "services", "network", "198.20.0.0/16")  # stored, with a warning
    assert public.exit_code == 0 and public.stderr.startswith(
        "warning: 198.20.0.0/16 is public address space: ")  # fmt: skip
    result = run(etcd, "services", "network", "10.96.0.0/16")
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert (
        result.stdout.strip()
        == "wrote /atomic.io/network/vxflow/config: ServiceNetwork 10.96.0.0/16"
    )
    assert run(etcd, "services", "network").stdout.strip() == "10.96.0.0/16"

    path = tmp_path / "web.json"
    path.write_text(json.dumps(WEB))
    result = run(etcd, "services", "set", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "wrote /atomic.io/network/vxflow/services/web: VIP 10.96.0.10 "
        "ports 80/TCP->8080,53/UDP->53, 2 backend(s)"
    )
    # a list from stdin is all or nothing: one is refused (another holds its VIP), so
    # neither is written; each refusal is named
    db = {**WEB, "Name": "db", "VIP": "10.96.0.12", "Backends": []}
    batch = [{**WEB, "Name": "api"}, db]
    result = run(etcd, "services", "set", "-", stdin=json.dumps(batch))
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "rejected /atomic.io/network/vxflow/services/api: VIP 10.96.0.10 belongs to service "
        "web (created earlier) [duplicate_vip]",
        "Error: 1 of 2 service(s) rejected: none written",
    ]
    assert "db" not in run(etcd, "services", "list").stdout
    # two of a list contesting one VIP, or one name twice: refused alike
    twice = [{**db, "Name": "x"}, {**db, "Name": "y"}, db, {**db, "VIP": "10.96.0.20"}]
    result = run(etcd, "services", "set", "-", stdin=json.dumps(twice))
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert "Error: 3 of 4 service(s) rejected: none written" in result.stderr
    assert "service db is given twice [duplicate_name]" in result.stderr
    assert run(etcd, "services", "list").stdout.splitlines()[1].split()[0] == "web"  # only
    result = run(etcd, "services", "set", "-", stdin=json.dumps([db]))
    assert result.exit_code == 0 and "wrote /atomic.io/network/vxflow/services/db" in result.stdout
    assert_operator_error(
        run(etcd, "services", "set", "-", stdin=json.dumps({**WEB, "VIP": "10.20.0.9"})),
        "/atomic.io/network/vxflow/services/web: VIP 10.20.0.9 lies inside the overlay 10.20.0.0/16 [bad_vip]",
    )
    assert_operator_error(run(etcd, "services", "set", "-", stdin="{oops"), "not JSON")
    assert_operator_error(run(etcd, "services", "set", "-", stdin="[" * 5000), "not JSON")

    table = run(etcd, "services", "list")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "VIP", "PORTS", "BACKENDS", "READY", "AFFINITY", "CHECK"]
    assert lines[1].split() == [
        "db",
        "10.96.0.12",
        "80/TCP->8080,53/UDP->53",
        "(none:",
        "dropped)",
        "0/0",
        "-",
        "-",
    ]
    assert lines[2].split() == [
        "web",
        "10.96.0.10",
        "80/TCP->8080,53/UDP->53",
        "10.20.1.5,10.20.3.7*2",
        "2/2",
        "-",
        "-",
    ]
    assert lines[3].startswith("2 service(s) in ServiceNetwork 10.96.0.0/16 at revision ")

    # a value written behind vxflow's back is listed as rejected, with its reason
    with Registry(etcd.endpoint, "/atomic.io/network") as reg:
        reg.etcd.put(reg.keys.service("bad"), json.dumps({**WEB, "Name": "bad", "VIP": "10.96.0.13",
                                                          "Backends": [{"IP": "192.0.2.1"}]}))  # fmt: skip
    doc = json.loads(run(etcd, "services", "list", "-o", "json").stdout)
    assert doc["ServiceNetwork"] == "10.96.0.0/16"
    assert [s["Name"] for s in doc["services"]] == ["db", "web"]
    assert doc["services"][1]["Backends"] == [
        {"IP": "10.20.1.5", "Weight": 1},
        {"IP": "10.20.3.7", "Weight": 2},
    ]
    assert [(r["key"], r["reason"]) for r in doc["rejected"]] == [
        ("/atomic.io/network/vxflow/services/bad", "bad_backend")
    ]
    with Registry(etcd.endpoint, "/atomic.io/network") as reg:  # a lease: leases list's
        reg.etcd.put(f"{reg.keys.root}/subnets/10.20.9.0-24", "{broken")
    lines = run(etcd, "services", "list").stdout.splitlines()  # --log-level error: still out
    assert lines[-2].endswith("; 1 rejected:"), lines
    assert lines[-1] == ("rejected service /atomic.io/network/vxflow/services/bad: backend "
                         "192.0.2.1 is not an address in the overlay 10.20.0.0/16 [bad_backend]")  # fmt: skip

    assert (
        run(etcd, "services", "rm", "db").stdout.strip()
        == "removed /atomic.io/network/vxflow/services/db"
    )
    assert_operator_error(
        run(etcd, "services", "rm", "db"), "no service at /atomic.io/network/vxflow/services/db"
    )
    assert_operator_error(run(None, "services", "list"), "etcd")


@pytest.mark.integration
def test_the_readme_commands_as_typed(etcd: EtcdServer, tmp_path: Path) -> None:
    """README (Services): `vxflow services network 10.96.0.0/16`, `vxflow services set
    web.json` with the example `vxflow services set --help` shows, `vxflow services list`,
    `vxflow services rm web`; the overlay is the demo's 198.19.0.0/16."""
    with Registry(etcd.endpoint, "/coreos.com/network") as reg:
        reg.set_config('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}')
    typed = as_typed(etcd, tmp_path)
    lines = readme_block("## Services (load balancing in the flows)")
    assert lines == ["vxflow services network 10.96.0.0/16", "vxflow services set web.json",
                     "vxflow services list", "vxflow services rm web"]  # fmt: skip
    helptext = typed("vxflow services set --help").stdout
    example = helptext.split("Example FILE (one object, or a list of them):")[1]
    (tmp_path / "web.json").write_text(example)
    first = typed(lines[0])
    assert first.stdout.strip() == "wrote /coreos.com/network/vxflow/config: ServiceNetwork " \
        "10.96.0.0/16" and "warning" not in first.stderr  # a private range  # fmt: skip
    assert typed(lines[1]).stdout.strip() == (
        "wrote /coreos.com/network/vxflow/services/web: VIP 10.96.0.10 ports 80/TCP->8080, "
        "2 backend(s), ClientIP affinity 600s, health check HTTP 8080/healthz every 5s "
        "(2 failures, 1 success)"
    )
    listed = typed(lines[2]).stdout.splitlines()
    assert listed[1].split() == ["web", "10.96.0.10", "80/TCP->8080", "198.19.1.254*2,198.19.2.254",
                                 "2/2", "ClientIP", "600s", "HTTP", "8080/healthz", "every", "5s",
                                 "(2", "failures,", "1", "success)"]  # fmt: skip
    assert typed(lines[3]).stdout.strip() == "removed /coreos.com/network/vxflow/services/web"


@pytest.mark.integration
def test_a_service_network_holding_etcd_a_node_or_a_controller_is_refused(underlay) -> None:
    """Every agent routes the ServiceNetwork into its gateway port: a range holding etcd,
    a node's PublicIP or a controller's address would cut every node off it. Refused with
    the reason, by `vxflow services network` and by every reader of the key (the View; each agent also
    checks it against etcd and its own routes: tests/test_ovsdb_agent.py)."""
    with EtcdServer(host=str(ROOT_UNDERLAY_IP)) as etcd, Registry(etcd.endpoint, KEYS.prefix) as reg:
        reg.set_config(SEED)
        node = reg.acquire(IPv4Address("198.51.100.7"), "02:00:00:00:00:07")
        assert reg.register_member("r1", "tcp:203.0.113.5:6653", 30) is not None
        assert_operator_error(run(etcd, "services", "network", "198.18.0.0/24"),
                              f"198.18.0.0/24 holds etcd endpoint {etcd.endpoint} ({ROOT_UNDERLAY_IP})")  # fmt: skip
        assert_operator_error(run(etcd, "services", "network", "198.51.100.0/24"),
                              f"holds the PublicIP of lease {node.subnet} (198.51.100.7)")  # fmt: skip
        assert_operator_error(run(etcd, "services", "network", "203.0.112.0/23"),
                              "holds the address of controller r1 (203.0.113.5)")  # fmt: skip
        assert reg.etcd.get(KEYS.vxflow_config) is None  # nothing was written
        # written behind the CLI's back: every reader refuses it, with the same reason
        reg.etcd.put(KEYS.vxflow_config, '{"ServiceNetwork": "198.51.100.0/24"}')
        snap = reg.snapshot()
        assert snap.vxflow == VxflowConfig()
        (rejected,) = [r for r in snap.rejected if r.key == KEYS.vxflow_config]
        assert "holds the PublicIP of lease" in str(rejected)


# -- the flow budget ------------------------------------------------------------------


def big(name: str, vip: str, ports: int, backends: int, affinity: bool = True) -> dict:
    """A service of `ports` ports and `backends` backends (in the overlay 10.20.0.0/16)."""
    return {
        "Name": name, "VIP": vip,
        "Ports": [{"Port": 1000 + i} for i in range(ports)],
        "Backends": [{"IP": f"10.20.{i // 250}.{i % 250 + 1}"} for i in range(backends)],
        "SessionAffinity": "ClientIP" if affinity else "None",
    }  # fmt: skip


def test_a_service_that_would_compile_to_657k_flows_is_refused() -> None:
    """256 ports x 512 backends with ClientIP affinity: a 13 KB value, 657,408 flows on every
    node (each port: 2 + 512 backends + 1 multipath + 2,053 links)."""
    value = big("huge", "10.96.0.20", 256, 512)
    assert len(json.dumps(value)) < MAX_SERVICE_BYTES
    rejected = judged(value, "huge")
    assert isinstance(rejected, Rejection) and rejected.reason == "flow_budget"
    assert rejected.detail == ("compiles to 657,408 flows on every node, more than the 16,384 "
                               "a service may have")  # fmt: skip
    # the same ports without affinity are 512 flows (and a group each): accepted
    assert service_flows(judged(big("huge", "10.96.0.20", 256, 512, affinity=False), "huge")) == 512


def test_the_services_share_a_flow_budget_and_the_older_keep_theirs() -> None:
    """Each of these is 6 ports x 250 backends with affinity: 6 x (2 + 250 + 1 + 1,031) =
    7,704 flows; eight fit the 65,536 of all services, the ninth (the newest) does not
    until an older one goes."""
    services = {
        f"s{i}": judged(big(f"s{i}", f"10.96.1.{i}", 6, 250), f"s{i}") for i in range(9)
    }
    services = {n: replace(s, create_revision=10 + i) for i, (n, s) in enumerate(services.items())}
    assert {service_flows(s) for s in services.values()} == {7_704}
    kept, rejected = resolve_services(services)
    assert sorted(kept) == [f"s{i}" for i in range(8)]
    assert [(r.key, r.reason) for r in rejected] == [("s8", "flow_budget")]
    assert "its 7,704 flows do not fit the 3,904 left of the services' 65,536" in rejected[0].detail
    del services["s0"]
    assert sorted(resolve_services(services)[0]) == [f"s{i}" for i in range(1, 9)]


@pytest.mark.integration
def test_services_set_refuses_what_exceeds_the_flow_budget(etcd: EtcdServer, tmp_path: Path) -> None:
    with Registry(etcd.endpoint, "/atomic.io/network") as reg:
        reg.set_config(SEED)
        reg.set_service_network("10.96.0.0/16")
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(big("huge", "10.96.0.20", 256, 512)))
    assert_operator_error(run(etcd, "services", "set", str(path)),
                          "compiles to 657,408 flows on every node, more than the 16,384 a service may have [flow_budget]")  # fmt: skip
    for i in range(8):
        path.write_text(json.dumps(big(f"s{i}", f"10.96.1.{i}", 6, 250)))
        assert run(etcd, "services", "set", str(path)).exit_code == 0
    path.write_text(json.dumps(big("s8", "10.96.1.8", 6, 250)))
    assert_operator_error(run(etcd, "services", "set", str(path)),
                          "its 7,704 flows do not fit the 3,904 left")  # fmt: skip


# -- IPv6 services ----------------------------------------------------------------------

DUAL = NetworkConfig(IPv4Network("10.20.0.0/16"), ipv6=FamilyConfig(
    IPv6Network("fc00::/48"), 64, IPv6Network("fc00:0:0:1::/64"), IPv6Network("fc00:0:0:ffff::/64")))  # fmt: skip
VX6 = VxflowConfig(IPv4Network("10.96.0.0/16"), IPv6Network("fd00:96::/108"))
WEB6 = {
    "Name": "web6",
    "VIP": "fd00:96::10",
    "Ports": [{"Port": 80, "TargetPort": 8080}],
    "Backends": [{"IP": "fc00:0:0:3::7", "Weight": 2}, {"IP": "fc00:0:0:1::5"}],
}
SEED6 = ('{"Network": "10.20.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}, '
         '"EnableIPv6": true, "IPv6Network": "fc00::/48"}')  # fmt: skip


def test_an_ipv6_service_parses_in_the_ipv6_service_network() -> None:
    svc = check_service(kv("web6", WEB6), "web6", DUAL, VX6)
    assert isinstance(svc, Service), svc
    assert svc.vip == IPv6Address("fd00:96::10")
    assert [(b.ip, b.weight) for b in svc.backends] == [
        (IPv6Address("fc00:0:0:1::5"), 1), (IPv6Address("fc00:0:0:3::7"), 2)]  # fmt: skip
    assert json.loads(service_to_json(svc))["Backends"][0] == {"IP": "fc00:0:0:1::5", "Weight": 1}
    # an IPv4 and an IPv6 service side by side; neither takes the other's VIP
    kept, rejected = resolve_services({"a": judged(WEB, vx=VX6, config=DUAL), "b": svc})
    assert len(kept) == 2 and rejected == []


@pytest.mark.parametrize(
    ("value", "vx", "config", "reason", "detail"),
    [
        ({**WEB6, "VIP": "fd00:97::10"}, VX6, DUAL, "bad_vip",
         "VIP fd00:97::10 is outside the IPv6ServiceNetwork fd00:96::/108"),
        ({**WEB6, "VIP": "fd00:96::f:ffff"}, VX6, DUAL, "bad_vip", "(the hairpin source)"),
        ({**WEB6, "VIP": "fd00:96::zz"}, VX6, DUAL, "bad_vip", "is not an IPv4 or IPv6 address"),
        ({**WEB6, "Backends": [{"IP": "10.20.1.5"}]}, VX6, DUAL, "bad_backend",
         "backend 10.20.1.5 is not an address in the overlay fc00::/48"),
        ({**WEB6, "Backends": [{"IP": "fd00:1::5"}]}, VX6, DUAL, "bad_backend",
         "backend fd00:1::5 is not an address in the overlay fc00::/48"),
        ({**WEB, "Backends": [{"IP": "fc00:0:0:1::5"}]}, VX6, DUAL, "bad_backend",
         "backend fc00:0:0:1::5 is not an address in the overlay 10.20.0.0/16"),
        ({**WEB6, "Backends": [{"IP": "fc00:0:0:1::5"}, {"IP": "fc00:0:0:1:0::5"}]}, VX6, DUAL,
         "duplicate_backend", "backend fc00:0:0:1::5 is listed twice"),
        (WEB6, VX, DUAL, "no_service_network",
         "VIP fd00:96::10: no IPv6ServiceNetwork in the vxflow config"),
        (WEB, VxflowConfig(service_network6=VX6.service_network6), DUAL, "no_service_network",
         "VIP 10.96.0.10: no ServiceNetwork in the vxflow config"),
        (WEB6, VX6, CONFIG, "bad_vip", "the network config has no IPv6 overlay (EnableIPv6)"),
        ({**WEB6, "HealthCheck": {"Type": "TCP", "Port": 0}}, VX6, DUAL, "bad_health_check",
         "HealthCheck Port 0 is not in 1..65535"),
    ],
)  # fmt: skip
def test_a_bad_ipv6_service_is_rejected_with_its_reason(value, vx, config, reason, detail) -> None:
    result = judged(value, value["Name"], vx=vx, config=config)
    assert isinstance(result, Rejection), result
    assert result.reason == reason and detail in result.detail, result.detail
    assert "\n" not in result.detail


def test_an_ipv6_service_takes_a_health_check() -> None:
    """Its backends are probed over IPv6 by their nodes' agents (ovsdb/prober.py)."""
    value = {**WEB6, "HealthCheck": {"Type": "HTTP", "Port": 8080, "Path": "/healthz"}}
    result = judged(value, value["Name"], vx=VX6, config=DUAL)
    assert isinstance(result, Service), result
    assert result.health_check == HealthCheck("HTTP", 8080, "/healthz")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"IPv6ServiceNetwork": "fc00:0:0:9::/108"}', "overlaps the overlay IPv6Network fc00::/48"),
        ('{"IPv6ServiceNetwork": "fe80::/108"}', "loopback, link-local or multicast"),
        ('{"IPv6ServiceNetwork": "ff02::/108"}', "loopback, link-local or multicast"),
        ('{"IPv6ServiceNetwork": "::/108"}', "loopback, link-local or multicast"),
        ('{"IPv6ServiceNetwork": "::ffff:0:0/108"}', "loopback, link-local or multicast"),
        ('{"IPv6ServiceNetwork": "fd00:96::/64"}', "must be a /108 to /126"),
        ('{"IPv6ServiceNetwork": "fd00:96::/127"}', "must be a /108 to /126"),
        ('{"IPv6ServiceNetwork": "fd00:96::1/108"}', "not an IPv6 CIDR without host bits"),
        ('{"IPv6ServiceNetwork": "10.96.0.0/16"}', "not an IPv6 CIDR without host bits"),
        ('{"ServiceNetwork": "fd00:96::/108"}', "not an IPv4 CIDR without host bits"),
        ('{"IPv6ServiceNetwork": ["fd00:96::/108"]}', "must be a CIDR string"),
    ],
)
def test_a_bad_ipv6_service_network_is_refused_in_one_line(raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_vxflow_config(raw, DUAL)
    assert err.value.field == ("ServiceNetwork" if raw.startswith('{"ServiceNetwork"') else "IPv6ServiceNetwork")
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_the_ipv6_service_network_needs_ipv6_and_leaves_the_ipv6_underlay_alone() -> None:
    raw = '{"IPv6ServiceNetwork": "fd00:96::/108"}'
    with pytest.raises(ConfigError, match="need EnableIPv6 and an IPv6Network"):
        parse_vxflow_config(raw, CONFIG)
    lease = Lease(IPv4Network("10.20.4.0/24"), IPv4Address("192.0.2.4"), 1, "02:00:00:00:00:04",
                  ipv6_subnet=IPv6Network("fc00:0:0:4::/64"),
                  public_ipv6=IPv6Address("fd00:96::4"), vtep_mac_v6="02:00:00:00:01:04")  # fmt: skip
    with pytest.raises(ConfigError, match=r"holds the PublicIPv6 of lease 10\.20\.4\.0/24 \(fd00:96::4\)"):
        parse_vxflow_config(raw, DUAL, underlay_of([lease], []))


def test_an_ipv4_only_vxflow_config_reads_and_writes_as_before() -> None:
    assert vxflow_config_to_json(VX) == '{"ServiceNetwork":"10.96.0.0/16"}'
    both = parse_vxflow_config('{"ServiceNetwork": "10.96.0.0/16", '
                               '"IPv6ServiceNetwork": "fd00:96::/108"}', DUAL)  # fmt: skip
    assert both == VX6 and parse_vxflow_config(vxflow_config_to_json(both), DUAL) == VX6
    assert parse_vxflow_config('{"IPv6ServiceNetwork": "fd00:96::/108"}', DUAL) == VxflowConfig(
        service_network6=IPv6Network("fd00:96::/108"))  # fmt: skip


@pytest.mark.integration
def test_ipv6_services_network_set_list_rm(etcd: EtcdServer, tmp_path: Path) -> None:
    with Registry(etcd.endpoint, "/atomic.io/network") as reg:
        reg.set_config(SEED6)
    assert_operator_error(run(etcd, "services", "network", "fe80::/108"),
                          "IPv6ServiceNetwork: fe80::/108 overlaps an unspecified, loopback, "
                          "link-local or multicast range")  # fmt: skip
    assert_operator_error(run(etcd, "services", "network", "fc00:0:0:9::/108"),
                          "overlaps the overlay IPv6Network fc00::/48")  # fmt: skip
    result = run(etcd, "services", "network", "fd00:96::/108")
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert result.stdout.strip() == (
        "wrote /atomic.io/network/vxflow/config: IPv6ServiceNetwork fd00:96::/108")
    assert run(etcd, "services", "network").stdout.strip() == "fd00:96::/108"
    assert run(etcd, "services", "network", "10.96.0.0/16").exit_code == 0  # the other family's
    assert run(etcd, "services", "network").stdout.splitlines() == ["10.96.0.0/16", "fd00:96::/108"]

    result = run(etcd, "services", "set", "-", stdin=json.dumps([WEB, WEB6]))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == (
        "wrote /atomic.io/network/vxflow/services/web6: VIP fd00:96::10 ports 80/TCP->8080, "
        "2 backend(s)")  # fmt: skip
    assert_operator_error(
        run(etcd, "services", "set", "-", stdin=json.dumps({**WEB6, "VIP": "10.96.0.77"})),
        "backend fc00:0:0:3::7 is not an address in the overlay 10.20.0.0/16 [bad_backend]")
    lines = run(etcd, "services", "list").stdout.splitlines()
    assert lines[2].split() == ["web6", "fd00:96::10", "80/TCP->8080",
                                "fc00:0:0:1::5,fc00:0:0:3::7*2", "2/2", "-", "-"]  # fmt: skip
    assert lines[3].startswith("2 service(s) in ServiceNetwork 10.96.0.0/16 and "
                               "IPv6ServiceNetwork fd00:96::/108 at revision ")  # fmt: skip
    doc = json.loads(run(etcd, "services", "list", "-o", "json").stdout)
    assert (doc["ServiceNetwork"], doc["IPv6ServiceNetwork"]) == ("10.96.0.0/16", "fd00:96::/108")
    assert doc["services"][1]["ReadyBackends"] == ["fc00:0:0:1::5", "fc00:0:0:3::7"]
    assert run(etcd, "services", "rm", "web6").stdout.strip() == (
        "removed /atomic.io/network/vxflow/services/web6")


@pytest.mark.integration
def test_the_readme_ipv6_service_network_command_as_typed(etcd: EtcdServer, tmp_path: Path) -> None:
    """README (Dual stack): `vxflow services network fd00:96::/108`, then its example service."""
    with Registry(etcd.endpoint, "/coreos.com/network") as reg:
        reg.set_config(SEED6.replace("10.20.0.0/16", "198.19.0.0/16"))
    typed = as_typed(etcd, tmp_path)
    (line,) = readme_block("## Dual stack (IPv6)")
    assert line == "vxflow services network fd00:96::/108"
    assert typed(line).stdout.strip() == (
        "wrote /coreos.com/network/vxflow/config: IPv6ServiceNetwork fd00:96::/108")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("## Dual stack (IPv6)")[1].split("e.g. `")[1].split("`")[0]
    (tmp_path / "web6.json").write_text(example.replace("\n", " "))
    assert typed("vxflow services set web6.json").stdout.strip() == (
        "wrote /coreos.com/network/vxflow/services/web6: VIP fd00:96::10 ports 80/TCP->8080, "
        "1 backend(s)")  # fmt: skip
