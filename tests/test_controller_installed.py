"""The compact installed table reads back exactly as the straightforward dict of Flows.

`controller.installed.Installed` keeps remote leases' flows as one shared Lease
per lease; these tests drive it and a plain `{key: Flow}` dict through the same
random changes (adds, deletes, foreign entries on a route's key, landed routes
for other own leases and configs, readbacks, settling) and require the two to
read the same after every step, by key, by value and by cookie.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from bench.leasegen import cluster
from controller.installed import Installed
from flows.compiler import FLOWS_PER_LEASE, compile_table, node_table, remote_lease_flows
from flows.flow import Flow, flow, output
from leases.model import BackendConfig

C = cluster(40)
CONFIG = C.config
OTHER_VNI = replace(CONFIG, backend=BackendConfig(vni=7))
# dual stack: every seventh lease IPv4 only (two flows where the others have four)
D = cluster(40, dual=True)
D = replace(D, leases=tuple(replace(x, ipv6_subnet=None, public_ipv6=None, vtep_mac_v6=None)
                            if i % 7 == 6 else x for i, x in enumerate(D.leases)))  # fmt: skip


def same(installed: Installed, plain: dict) -> None:
    """`installed` reads back as `plain` by every way the controller reads it."""
    assert len(installed) == len(plain)
    assert dict(installed.items()) == plain and installed == plain
    assert sorted(installed.values(), key=repr) == sorted(plain.values(), key=repr)
    for key, f in plain.items():
        assert installed[key] == f and installed.get(key) == f and key in installed
    cookies = {f.cookie for f in plain.values()}
    for skip in (frozenset(), frozenset(list(cookies)[::2])):
        assert sorted(installed.all_but(skip), key=repr) == sorted(
            (f for f in plain.values() if f.cookie not in skip), key=repr
        )
    assert {c for c in installed.cookies() if installed.of_cookies([c])} == cookies
    for cookie in cookies:
        want = sorted((f for f in plain.values() if f.cookie == cookie), key=repr)
        assert installed.has_cookie(cookie)
        assert sorted(installed.of_cookies([cookie]), key=repr) == want


def routes_of(own_index: int, indices: list[int], config=CONFIG, c=C):
    own = c.leases[own_index]
    leases = [c.leases[i] for i in indices if i != own_index]
    return node_table(config, [own, *leases], [], own).routes


@pytest.mark.parametrize("dual", [False, True], ids=["ipv4", "dual-stack"])
@pytest.mark.parametrize("seed", range(8))
def test_random_changes_read_back_identical(seed: int, dual: bool) -> None:
    c = D if dual else C
    config = c.config
    other = replace(config, backend=BackendConfig(vni=7))
    rng = random.Random(seed)
    installed, plain = Installed(), {}
    own = rng.randrange(5)
    for _ in range(80):
        op = rng.choice(["routes", "routes", "add", "delete", "foreign", "readback", "settle",
                         "own", "config"])  # fmt: skip
        if op in ("routes", "own", "config"):
            if op == "own":
                own = rng.randrange(5)
            routes = routes_of(own, rng.sample(range(40), rng.randrange(1, 8)),
                               other if op == "config" else config, c)  # fmt: skip
            assert routes.halves == (sum(x.ipv6_subnet is not None for x in routes.leases)
                                     if dual and c.leases[own].ipv6_subnet else 0)  # fmt: skip
            installed.put_routes(routes)
            plain.update((f.key, f) for f in routes.flows())
        elif op == "add":  # a plain flow, or a lease's flow (a landed change of one lease)
            lease = c.leases[rng.randrange(5, 40)]
            six = dual and lease.ipv6_subnet is not None and c.leases[own].ipv6_subnet is not None
            f = rng.choice([*remote_lease_flows(config, lease, c.leases[own], six),
                            flow(30, 100, {"in_port": rng.randrange(9)}, [output(2)], 0x1234)])  # fmt: skip
            installed.put(f)
            plain[f.key] = f
        elif op == "delete" and plain:
            key = rng.choice(list(plain))
            installed.discard(key)
            del plain[key]
        elif op == "foreign" and plain:  # another client's entry replaces one of ours by key
            old = plain[rng.choice(list(plain))]
            f = Flow(old.table, old.priority, old.match, (("output", 9),), 0x42)
            installed.put(f)
            plain[f.key] = f
        elif op == "readback":
            flows = list(plain.values())
            rng.shuffle(flows)
            installed.replace(flows)
        elif op == "settle":
            table = compile_table(config, c.leases[: rng.randrange(5, 40)], [], c.leases[own].public_ip)
            rest, settled = installed.settle(table)
            for cookie in settled:  # held exactly as desired: nothing of them left to compare
                want = {f for f in table.routes.flows() if f.cookie == cookie}
                assert set(installed.of_cookies([cookie])) == want
                assert not any(f.cookie == cookie for f in rest.routes.flows())
            assert len(rest) == len(table) - sum(1 for f in table.routes.flows() if f.cookie in settled)
        same(installed, plain)


@pytest.mark.parametrize("c", [C, D], ids=["ipv4", "dual-stack"])
def test_a_read_back_table_is_held_compactly_once_settled(c) -> None:
    """(Dual stack: a lease's four flows, IPv6 ones included, are held as one entry.)"""
    own = c.leases[0]
    table = compile_table(c.config, c.leases, [], own.public_ip)
    installed = Installed()
    installed.replace(list(table))
    rest, settled = installed.settle(table)
    assert len(settled) == len(c.leases) - 1 and not rest.routes and rest.flows == table.flows
    assert installed.held_leases == len(c.leases) - 1
    assert len(installed._flows) == len(table.flows)  # nothing of the leases left as Flows
    same(installed, {f.key: f for f in table})
    # the model's leases are shared, not copied: one table's entry is the model's object
    assert installed.settle(table)[1] == settled


def test_a_drifted_lease_flow_is_not_settled() -> None:
    own = C.leases[0]
    table = compile_table(CONFIG, C.leases[:5], [], own.public_ip)
    route = next(iter(table.routes.flows()))
    drifted = replace(route, actions=(*route.actions[:-1], ("output", 9)))
    installed = Installed()
    installed.replace([f if f != route else drifted for f in table])
    rest, settled = installed.settle(table)
    assert route.cookie not in settled and len(settled) == 3
    assert set(rest.routes.flows()) == set(remote_lease_flows(CONFIG, C.leases[1], own))


def test_a_rewrite_of_the_own_lease_that_keeps_its_public_ip_keeps_the_table_compact() -> None:
    """The flows of remote leases depend on the own lease's PublicIP only: a rewrite of it
    (a new revision) neither unsettles nor unpacks what the switch holds."""
    own = C.leases[0]
    installed = Installed()
    installed.put_routes(routes_of(0, list(range(1, 10))))
    rewritten = replace(own, mod_revision=99)
    table = node_table(CONFIG, [rewritten, *C.leases[1:12]], [], rewritten)
    rest, settled = installed.settle(table)
    assert len(settled) == 9 and len(rest.routes) == 2 * FLOWS_PER_LEASE
    installed.put_routes(rest.routes)
    assert installed.held_leases == 11 and len(installed) == 11 * FLOWS_PER_LEASE
    same(installed, {f.key: f for f in table.routes.flows()})


def test_a_held_lease_whose_ipv6_half_landed_since_is_taken_in_whole() -> None:
    """A remote lease held compactly gains its IPv6 half: its two IPv6 flows land as Flows
    (a scoped change), and the next comparison settles the lease with all four, held as
    one entry again, not as an entry plus Flows that every comparison would go over."""
    own, other = D.leases[0], D.leases[1]
    v4_only = replace(other, ipv6_subnet=None, public_ipv6=None, vtep_mac_v6=None)
    installed = Installed()
    installed.put_routes(node_table(D.config, [own, v4_only], [], own).routes)
    table = node_table(D.config, [own, other], [], own)
    for f in table.routes.flows()[FLOWS_PER_LEASE:]:  # its IPv6 route and check landed
        installed.put(f)
    same(installed, {f.key: f for f in table.routes.flows()})
    rest, settled = installed.settle(table)
    assert settled == {table.routes.flows()[0].cookie} and not rest.routes
    assert installed.held_leases == 1 and len(installed._flows) == 0
    same(installed, {f.key: f for f in table.routes.flows()})
