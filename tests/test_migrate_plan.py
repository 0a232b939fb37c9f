"""`vxflow migrate`'s pure plan (ovsdb/migrate.py): the checks and the steps from what was
observed on a flannel node; and, needing no node (no root), its record and undos on
files in a temporary directory and the processes they tell apart."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from flows.ports import vtep_mac_for
from leases.config import parse_config
from leases.model import Lease
from leases.subnet_env import SubnetEnv
from ovsdb.migrate import (
    FdbEntry,
    Kind,
    Link,
    Migration,
    Neighbour,
    Observation,
    PodPort,
    Record,
    Run,
    Settings,
    Step,
    StepFailed,
    Undo,
    is_switched,
    plan,
    pods_on_bridge,
    runs,
    start_time,
    switched_conflist,
    write_atomically,
)

CONFIG = parse_config('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}')
SUBNET = IPv4Network("198.19.7.0/24")
ME, PEER = IPv4Address("198.18.0.33"), IPv4Address("198.18.0.34")
FLANNEL_VTEP = "ae:11:22:33:44:55"  # flanneld's: the kernel device's random MAC
CNI0_MAC = "be:00:00:00:00:01"
PODS = (PodPort("veth1", IPv4Address("198.19.7.254"), "0a:58:c6:13:07:fe"),
        PodPort("veth2", IPv4Address("198.19.7.253"), "0a:58:c6:13:07:fd"))  # fmt: skip


def lease(subnet: IPv4Network = SUBNET, public_ip: IPv4Address = ME, **kw) -> Lease:
    return Lease(subnet=subnet, public_ip=public_ip, vni=1, vtep_mac=FLANNEL_VTEP, **kw)


def observed(**changes) -> Observation:
    """A flannel node as flanneld and its CNI plugin leave it, with two pods."""
    base = Observation(
        public_ip=ME,
        subnet_file=Path("/run/flannel/subnet.env"),
        config=CONFIG,
        leases=(lease(), lease(IPv4Network("198.19.9.0/24"), PEER)),
        subnet_env=SubnetEnv(CONFIG.network, IPv4Interface("198.19.7.1/24"), 1450, False),
        vxlan=Link("flannel.1", FLANNEL_VTEP, (IPv4Interface("198.19.7.0/32"),), ME),
        vxlan_routes=1,
        bridge=Link("cni0", CNI0_MAC, (IPv4Interface("198.19.7.1/24"),)),
        bridge_ports=tuple(p.port for p in PODS),
        fdb=tuple(FdbEntry(p.mac, p.port) for p in PODS),
        neighbours=tuple(Neighbour(p.ip, p.mac) for p in PODS),
        conflist=Path("/etc/cni/net.d/10-flannel.conflist"),
        network_name="cbr0",
        allocations=(IPv4Address("198.19.7.2"), PODS[0].ip),
    )
    return replace(base, **changes)


def test_a_flannel_node_gets_every_step_in_order() -> None:
    result = plan(observed())
    assert result.ok and result.problems == []
    assert result.pods == sorted(PODS, key=lambda p: p.port)
    assert [s.name for s in result.steps] == [
        "fence flanneld", "take the lease over", "start the agent", "keep ip-masq", "move veth1",
        "move veth2", "remove flannel.1", "remove cni0", "carry the allocations over",
        "switch the CNI config",
    ]  # fmt: skip
    assert [s.pod for s in result.steps if s.pod] == result.pods
    lines = result.lines()
    assert lines[0].startswith("1. fence flanneld: ")
    assert f"198.19.7.0-24 for {ME}, same key and subnet" in lines[1]
    assert f"VtepMAC {FLANNEL_VTEP} -> {vtep_mac_for(ME)}" in lines[1]
    assert lines[2] == ("3. start the agent: it holds 198.19.7.0/24 and brings up br-int with "
                        "the gateway port on 198.19.7.1/24; the pods' ARP entry for 198.19.7.1 "
                        "(be:00:00:00:00:01) keeps routing")  # fmt: skip
    assert lines[3] == ("4. keep ip-masq: off, as FLANNEL_IPMASQ=false: the agent's subnet "
                        "file must say the same")  # fmt: skip
    assert lines[4] == ("5. move veth1: pod 198.19.7.254 0a:58:c6:13:07:fe from cni0 to br-int "
                        "as a vxflow pod port; its endpoint published")  # fmt: skip
    assert "with its 1 route(s)" in lines[6]
    # host-local's allocations and every pod's address, once each
    assert lines[8] == ("9. carry the allocations over: 3 address(es) from host-local's cbr0 "
                        "kept for vxflow-cni, which takes the network over: 198.19.7.2, "
                        "198.19.7.253, 198.19.7.254")  # fmt: skip
    assert lines[9] == "10. switch the CNI config: /etc/cni/net.d/10-flannel.conflist to vxflow-cni"


def test_with_ip_masq_vxflows_table_comes_before_the_fence_and_flanneld_rules_go_later() -> None:
    """Masquerade never stops: vxflow's table is in place while flanneld still runs, and
    flanneld's rules go only once it is fenced and the agent (which keeps the table) is up."""
    env = replace(observed().subnet_env, ipmasq=True)
    lines = plan(observed(subnet_env=env)).lines()
    assert lines[0] == ("1. put vxflow's ip-masq in place: table ip vxflow with flannel's "
                        "masquerade rules for 198.19.0.0/16 and 198.19.7.0/24, beside flanneld's "
                        "FLANNEL-POSTRTG: masquerade never stops")  # fmt: skip
    assert [line.split(":")[0] for line in lines[1:5]] == [
        "2. fence flanneld", "3. take the lease over", "4. start the agent", "5. keep ip-masq"]
    assert lines[4] == ("5. keep ip-masq: on, as FLANNEL_IPMASQ=true: the agent's subnet file "
                        "must say the same; flanneld's FLANNEL-POSTRTG rules recorded, then "
                        "removed (vxflow's table masquerades)")  # fmt: skip
    assert len(lines) == 11


def test_a_node_without_pods_conflist_or_store_still_has_a_plan() -> None:
    result = plan(observed(bridge_ports=(), fdb=(), neighbours=(), conflist=None,
                           network_name=None, allocations=()))  # fmt: skip
    assert result.ok and result.pods == []
    lines = "\n".join(result.lines())
    assert "carry the allocations over: no flannel CNI network found: nothing to carry\n" in lines
    assert "no flannel conflist found: nothing to switch" in lines
    assert [s.name for s in result.steps][4:6] == ["remove flannel.1", "remove cni0"]


def test_a_vtep_mac_that_is_already_vxflows_is_said_unchanged() -> None:
    own = replace(lease(), vtep_mac=vtep_mac_for(ME))
    assert "(VtepMAC unchanged)" in plan(observed(leases=(own,))).lines()[1]


def failed(**changes) -> list[str]:
    result = plan(observed(**changes))
    assert not result.ok and result.steps == []
    assert result.lines() == [f"check failed: {p}" for p in result.problems]
    return result.problems


def test_each_failed_check_is_one_line_and_no_step() -> None:
    assert failed(errors=("etcd: no etcd endpoint answered",)) == [
        "etcd: no etcd endpoint answered"]
    assert failed(leases=(lease(public_ip=PEER),)) == [
        f"the lease for {SUBNET} belongs to {PEER}, not to this node ({ME})"]
    assert failed(leases=()) == [
        f"etcd holds no lease for {SUBNET} (the subnet file's): flanneld's lease expired or "
        "was deleted"]
    assert failed(subnet_env=None) == [
        "/run/flannel/subnet.env: missing or malformed (flanneld's subnet file; --subnet-file)"]
    env = SubnetEnv(IPv4Network("10.0.0.0/8"), IPv4Interface("198.19.7.1/24"), 1450, True)
    assert failed(subnet_env=env) == [
        "/run/flannel/subnet.env says FLANNEL_NETWORK=10.0.0.0/8, etcd's config 198.19.0.0/16"]
    assert failed(vxlan=None) == ["flannel.1: no such device (is this a flannel vxlan node?)"]
    assert failed(vxlan=Link("flannel.1", FLANNEL_VTEP, (), PEER)) == [
        f"flannel.1 sends from {PEER}, not from this node's PublicIP {ME}"]
    assert failed(flanneld_pid=4242) == ["--flanneld-pid 4242: no such process"]
    assert failed(flanneld_pid=4242, flanneld_command="/usr/sbin/sshd -D") == [
        "--flanneld-pid 4242 is not flanneld: /usr/sbin/sshd -D"]
    assert plan(observed(flanneld_pid=4242, flanneld_command="/opt/bin/flanneld --ip-masq")
                ).lines()[0].startswith("1. fence flanneld: stop it (PID 4242): ")  # fmt: skip
    assert failed(bridge=None) == [
        "cni0: no such bridge (flannel's CNI bridge; --cni-bridge)"]
    assert failed(bridge=Link("cni0", CNI0_MAC, (IPv4Interface("198.19.7.9/24"),))) == [
        "cni0 does not hold the gateway 198.19.7.1/24"]


def test_a_dual_stack_node_is_refused_up_front_in_one_line() -> None:
    """From its subnet file or its lease, whatever else is wrong with the node."""
    refusal = "a dual-stack flannel node: vxflow migrate moves IPv4-only nodes"
    dual = lease(ipv6_subnet=IPv6Network("fd00:198:19:7::/64"),
                 public_ipv6=IPv6Address("fd00:198:18::33"))  # fmt: skip
    assert failed(leases=(dual,), vxlan=None) == [f"etcd's lease {dual.label}: {refusal}"]
    env = replace(observed().subnet_env, ipv6_network=IPv6Network("fd00:198:19::/48"),
                  ipv6_subnet=ipaddress.ip_interface("fd00:198:19:7::1/64"))  # fmt: skip
    assert failed(subnet_env=env, errors=("etcd: unreachable",), config=None) == [
        f"/run/flannel/subnet.env has FLANNEL_IPV6_SUBNET=fd00:198:19:7::1/64: {refusal}"]


def test_several_failed_checks_are_all_said() -> None:
    problems = failed(errors=("OVSDB: cannot connect",), vxlan=None,
                      leases=(lease(public_ip=PEER),))  # fmt: skip
    assert len(problems) == 3 and problems[0] == "OVSDB: cannot connect"


def test_without_etcd_the_rest_cannot_be_judged_but_is_not_invented() -> None:
    assert failed(config=None, leases=(), errors=("etcd: unreachable",)) == ["etcd: unreachable"]


def test_pods_come_from_the_fdb_and_the_neighbour_table() -> None:
    a, b = PODS
    fdb = [FdbEntry(a.mac.upper(), a.port), FdbEntry(b.mac, b.port)]
    neighbours = [Neighbour(a.ip, a.mac), Neighbour(b.ip, b.mac),
                  Neighbour(IPv4Address("198.18.0.1"), b.mac)]  # outside the subnet: not its IP
    pods, problems = pods_on_bridge([b.port, a.port], fdb, neighbours, SUBNET)
    assert (pods, problems) == (list(PODS), [])


def test_ports_that_cannot_be_told_are_problems() -> None:
    a, b = PODS
    silent = pods_on_bridge([a.port, "veth9"], [FdbEntry(a.mac, a.port)],
                            [Neighbour(a.ip, a.mac)], SUBNET)  # fmt: skip
    assert silent[0] == [a] and silent[1] == [
        "veth9: the bridge learned no MAC behind it (a silent pod: make it send, e.g. ping it "
        "from the node, and run again)"]
    two = pods_on_bridge([a.port], [FdbEntry(a.mac, a.port), FdbEntry(b.mac, a.port)],
                         [Neighbour(a.ip, a.mac)], SUBNET)  # fmt: skip
    assert two == ([], [f"veth1: the bridge learned 2 MACs behind it ({b.mac}, {a.mac}): "
                        "not one pod's port"])  # fmt: skip
    no_ip = pods_on_bridge([a.port], [FdbEntry(a.mac, a.port)], [], SUBNET)
    assert no_ip == ([], [f"veth1 ({a.mac}): no neighbour entry on the bridge gives its IP in "
                          f"{SUBNET} (ping it from the node, and run again)"])  # fmt: skip
    same_ip = pods_on_bridge([a.port, b.port], [FdbEntry(a.mac, a.port), FdbEntry(b.mac, b.port)],
                             [Neighbour(a.ip, a.mac), Neighbour(a.ip, b.mac)], SUBNET)  # fmt: skip
    assert same_ip[1] == [f"{a.ip} is on two ports: veth1 and veth2"]
    assert failed(fdb=()) == [
        f"{p.port}: the bridge learned no MAC behind it (a silent pod: make it send, e.g. ping "
        "it from the node, and run again)" for p in PODS]


def test_the_record_a_re_run_resumes_keeps_the_plan_and_how_far_it_got() -> None:
    """The state file's record: the steps (a move's pod too), the steps done, what undoing
    them needs; anything else is refused as not a record."""
    result = plan(observed())
    record = Record(1, SUBNET, observed().bridge, result.pods, sysctls={"veth1": {"/p": "0"}},
                    written=["/s/198.19.7.254"], conflist="/c", conflist_text="{}", ipmasq=True,
                    network="cbr0", steps=result.steps, done=5, flanneld_pid=42, flanneld_start=4242,
                    agent_started=1.5,
                    overlay=CONFIG.network, flannel_masq=["-A POSTROUTING -j FLANNEL-POSTRTG"])  # fmt: skip
    again = Record.from_json(record.to_json())
    assert again == record
    assert not again.finished
    assert again.steps[4].pod == PODS[0]
    assert replace(again, done=len(again.steps)).finished
    for text in ("{}", "[]", record.to_json().replace('"pod": "veth1"', '"pod": "veth9"')):
        with pytest.raises((ValueError, KeyError, TypeError)):
            Record.from_json(text)


def _previous_release(record: Record) -> Record:
    """`record` as the previous release wrote it: without `agent_started`."""
    d = json.loads(record.to_json())
    del d["agent_started"]
    return Record.from_json(json.dumps(d))


def test_a_rollback_of_a_previous_releases_record_stops_the_agent_once_its_step_is_done(
    tmp_path: Path,
) -> None:
    """The previous release recorded no `agent_started`: with the agent step done, the
    rollback runs --stop-agent all the same (else the agent renews the lease beside the
    flanneld started again, and rebuilds br-int); before it, there is no agent to stop."""
    result = plan(observed())
    agent = next(n for n, step in enumerate(result.steps, 1) if step.name == "start the agent")
    settings = Settings(ME, tmp_path / "subnet.env", "unix:/nonexistent")
    stopped = tmp_path / "stopped"
    for done, stops in ((agent, True), (len(result.steps), True), (agent - 1, False)):
        record = _previous_release(Record(1, SUBNET, observed().bridge, result.pods,
                                          steps=result.steps, done=done))  # fmt: skip
        Undo(settings, Run("true", f"touch {stopped}"), None, record, print)._stop_agent()
        assert stopped.exists() == stops, done
        stopped.unlink(missing_ok=True)


def test_the_fenced_process_is_told_by_its_pid_and_start_time_not_its_command_line() -> None:
    """A process that took the fenced flanneld's PID (its command line naming flannel too, as
    `vxflow agent --subnet-file /run/flannel/subnet.env` does) is not that flanneld: its start
    time differs. One that ended runs no more."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "vxflow",
                             "agent", "--subnet-file", "/run/flannel/subnet.env"])  # fmt: skip
    try:
        start = start_time(proc.pid)
        assert start is not None and runs(proc.pid, start)
        assert not runs(proc.pid, start - 1)  # the flanneld fenced there started before
        assert not runs(proc.pid, None)  # none recorded: nothing to wait for
    finally:
        proc.kill()
        proc.wait()
    assert start_time(proc.pid) is None and not runs(proc.pid, start)


def test_the_undo_writes_a_deleted_conflist_back(tmp_path: Path) -> None:
    """The switched conflist deleted since (by hand, by a tool): the undo writes flannel's
    back from the record, where it raised FileNotFoundError."""
    conflist = tmp_path / "net.d" / "10-flannel.conflist"
    record = Record(1, SUBNET, observed().bridge, [], conflist=str(conflist),
                    conflist_text=FLANNEL_CONFLIST)  # fmt: skip
    settings = Settings(ME, tmp_path / "subnet.env", "unix:/nonexistent")
    Undo(settings, Run("true", "true"), None, record, print)._conflist_back()
    assert conflist.read_text() == FLANNEL_CONFLIST


def test_a_record_the_rollback_cannot_remove_is_said_with_the_failed_step(tmp_path: Path) -> None:
    """A step fails and its rollback cannot remove the state file (here a directory by then):
    the error still names the step and why, and says the record is left, where the OSError
    of the removal replaced it."""
    state = tmp_path / "migrate.json"
    settings = Settings(ME, tmp_path / "subnet.env", "unix:/nonexistent", state_file=state)
    record = Record(1, SUBNET, observed().bridge, [], steps=[Step(Kind.MASQ, "keep ip-masq", "")])
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if line.endswith("; rolling back"):  # something makes the record unremovable
            state.unlink()
            (state / "in-the-way").mkdir(parents=True)

    with pytest.raises(StepFailed) as failed:
        Migration(settings, Run("true", "true"), None, record, say).carry_out()
    # (no subnet file: said so, where it used to read "says false, flanneld's said false")
    why = (f"step 1 (keep ip-masq) failed: the agent's {settings.subnet_file} is missing or "
           "unreadable: its FLANNEL_IPMASQ cannot be checked against flanneld's")  # fmt: skip
    assert lines == ["1. keep ip-masq: ", f"{why}; rolling back"]
    assert str(failed.value).startswith(f"{why}; rolled back, but {state} still records the "
                                        "migration ([Errno 21] Is a directory: ")  # fmt: skip


def test_a_write_is_synced_before_its_rename_and_the_directory_after(tmp_path: Path) -> None:
    """`write_atomically` as strace sees it: the temporary file's data synced, then renamed,
    then the directory synced: a crash leaves the old text or the new one, never a torn or
    empty file under the name (the state file, the conflist)."""
    path = tmp_path / "migrate.json"
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-qq", "-f", "-y", "-o", str(trace), "-e",
                    "trace=fsync,fdatasync,rename,renameat,renameat2", sys.executable, "-c",
                    "import sys; from pathlib import Path; from ovsdb.migrate import "
                    "write_atomically; write_atomically(Path(sys.argv[1]), 'new')", str(path)],
                   check=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    calls = [line.split(None, 1)[1] for line in trace.read_text().splitlines()
             if str(tmp_path) in line]  # fmt: skip
    assert [call.split("(")[0] for call in calls] == ["fsync", "rename", "fsync"], calls
    assert f"<{tmp_path}/.migrate.json.tmp>" in calls[0] and f"<{tmp_path}>" in calls[2], calls
    assert path.read_text() == "new"
    write_atomically(path, "newer")
    assert path.read_text() == "newer" and not path.with_name(".migrate.json.tmp").exists()


FLANNEL_CONFLIST = ('{"name": "cbr0", "cniVersion": "0.3.1", "plugins": [{"type": "flannel", '
                    '"delegate": {"isDefaultGateway": true}}, {"type": "portmap"}]}')  # fmt: skip


def test_the_switched_conflist_is_recognised_and_anything_else_is_a_clear_error() -> None:
    """What the switch writes: flannel's plugin replaced by vxflow-cni's, the rest kept; a
    re-run recognises it (its agentSocket and dataDir), not one of other settings; a
    config without flannel's plugin is one line, never a crash."""
    settings = Settings(ME, Path("/run/flannel/subnet.env"), "unix:/db.sock",
                        cni_socket="/run/a.sock", cni_data_dir=Path("/var/lib/d"))  # fmt: skip
    switched = switched_conflist(FLANNEL_CONFLIST, settings, "br-int")
    conf = json.loads(switched)
    assert (conf["name"], [p["type"] for p in conf["plugins"]]) == ("cbr0", ["vxflow", "portmap"])
    assert conf["plugins"][0]["isDefaultGateway"] is True
    assert is_switched(switched, settings)
    assert not is_switched(FLANNEL_CONFLIST, settings)
    assert not is_switched(switched, replace(settings, cni_socket="/run/b.sock"))
    assert not is_switched("{", settings)
    for text in (switched, "{", "[]", '{"plugins": 3}', '{"plugins": [{"type": "bridge"}]}'):
        with pytest.raises(StepFailed):
            switched_conflist(text, settings, "br-int")
