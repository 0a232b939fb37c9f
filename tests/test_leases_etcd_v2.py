"""A config (and leases) in etcd's v2 store, as the seed and flannel before v0.14 wrote them:
found and named where the v3 store has none, and `vxflow config import-v2` (real etcd 3.4
run with --enable-v2=true; and one without v2, whose behaviour must not change)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner, Result

from leases.config import parse_config
from leases.errors import ConfigMissing
from leases.etcd_server import EtcdServer
from leases.registry import Registry
from tests.ofharness import Controller, wait_for
from tests.security import ETCD_PASSWORD, ETCD_USER, etcd_env, locked_etcd, make_pki
from tests.test_leases_cli import assert_operator_error
from vxflow.cli import cli

pytestmark = pytest.mark.integration

PREFIX = "/atomic.io/network"
SEED = '{"Network": "10.20.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'


def lease_value(public_ip: str, mac: str) -> str:
    """A lease as flannel before v0.10 wrote it (no VNI, no PublicIPv6): the seed's era."""
    return json.dumps(
        {"PublicIP": public_ip, "BackendType": "vxlan", "BackendData": {"VtepMAC": mac}},
        separators=(",", ":"),
    )


@pytest.fixture
def etcd_v2() -> Iterator[EtcdServer]:
    """etcd 3.4 serving the v2 API too, as the seed's clusters ran it."""
    server = EtcdServer(enable_v2=True).start()
    try:
        yield server
    finally:
        server.stop()


def run(etcd: EtcdServer, *args: str) -> Result:
    env = {"FLANNELD_ETCD_ENDPOINTS": etcd.endpoint, "FLANNELD_ETCD_PREFIX": PREFIX}
    return CliRunner().invoke(cli, ["--log-level", "error", *args], env=env)


def typed(line: str) -> Result:
    """A `vxflow ...` command line exactly as an error message or the README shows it."""
    words = shlex.split(line)
    assert words[0] == "vxflow", line
    return CliRunner().invoke(cli, ["--log-level", "error", *words[1:]], env={})


def curl_put(etcd: EtcdServer) -> None:
    """The seed's form: a PUT to the v2 REST API with curl."""
    subprocess.run(
        ["curl", "-sS", "-L", f"{etcd.endpoint}/v2/keys/atomic.io/network/config", "-XPUT",
         "-d", f"value={SEED}"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def etcdctl_mk(etcd: EtcdServer) -> None:
    """The seed's other form: `ETCDCTL_API=2 etcdctl mk` (Debian's etcd-client 3.4)."""
    subprocess.run(
        ["etcdctl", "--endpoints", etcd.endpoint, "mk", f"{PREFIX}/config", SEED],
        check=True, capture_output=True, timeout=30, env={**os.environ, "ETCDCTL_API": "2"},
    )  # fmt: skip


def v3_keys(etcd: EtcdServer) -> dict[str, bytes]:
    with Registry(etcd.endpoint, PREFIX) as reg:
        kvs, _ = reg.etcd.range(reg.keys.root, prefix=True)
    return {kv.key: kv.value for kv in kvs}


@pytest.mark.parametrize("write", [curl_put, etcdctl_mk], ids=["curl", "etcdctl-mk"])
def test_a_v2_config_is_named_with_the_command_that_fixes_it(etcd_v2: EtcdServer, write) -> None:
    write(etcd_v2)
    fix = (
        f"vxflow config import-v2 --etcd-endpoints {etcd_v2.endpoint} --etcd-prefix {PREFIX} "
        "--with-leases"
    )
    for args in (("config", "show"), ("leases", "list"), ("services", "list")):
        result = run(etcd_v2, *args)
        assert_operator_error(result, "in etcd's v3 store, which vxflow reads; etcd's v2 store "
                                      "holds one there (written by flannel before v0.14")  # fmt: skip
        assert f"`{fix}`" in result.stderr, result.stderr
        assert "config set" not in result.stderr  # the fix is the import, not a new config
    result = typed(fix)
    assert result.exit_code == 0, result.output
    shown = run(etcd_v2, "config", "show", "--raw")
    assert shown.exit_code == 0 and shown.stdout.strip() == SEED


def test_import_copies_config_and_leases_with_the_ttl_they_had_left(etcd_v2: EtcdServer) -> None:
    subnets = {"10.20.5.0-24": ("198.18.0.5", 600), "10.20.9.0-24": ("198.18.0.9", 86400)}
    for name, (ip, ttl) in subnets.items():
        etcd_v2.v2_put(f"{PREFIX}/subnets/{name}", lease_value(ip, "2E:83:84:1B:95:E4"), ttl=ttl)
    etcd_v2.v2_put(f"{PREFIX}/config", SEED)
    time.sleep(2)  # the TTLs left now differ from the ones written: the copy must take these
    with Registry(etcd_v2.endpoint, PREFIX) as reg:
        read_at = time.monotonic()
        left = {
            n["key"]: n["ttl"]
            for n in reg.etcd.v2_get(f"{PREFIX}/subnets", recursive=True)["nodes"]
        }
        result = run(etcd_v2, "config", "import-v2", "--with-leases")
        assert result.exit_code == 0, result.output
        assert reg.get_config_raw() == SEED.encode()  # byte for byte: an equal config
        assert reg.get_config() == parse_config(SEED)
        snap = reg.snapshot()
        ttls = {reg.keys.lease(lease.subnet): reg.time_to_live(lease) for lease in snap.leases}
        elapsed = time.monotonic() - read_at
    assert set(ttls) == set(left) == {f"{PREFIX}/subnets/{n}" for n in subnets}
    for key, ttl in ttls.items():
        assert left[key] - elapsed - 1 <= ttl <= left[key], (key, ttl, left[key], elapsed)
        assert left[key] < subnets[key.rsplit("/", 1)[1]][1]  # what was left, not the original
    assert (
        v3_keys(etcd_v2)[f"{PREFIX}/subnets/10.20.5.0-24"]
        == lease_value("198.18.0.5", "2E:83:84:1B:95:E4").encode()
    )  # copied as v2 held it
    for name in subnets:
        assert f"copied lease {name.replace('-', '/')} of {subnets[name][0]}, TTL " in result.stdout
    assert result.stdout.splitlines()[-1] == f"wrote {PREFIX}/config to the v3 store"


def test_reservations_stay_reservations_and_invalid_entries_are_listed_and_skipped(
    etcd_v2: EtcdServer,
) -> None:
    etcd_v2.v2_put(f"{PREFIX}/config", SEED)
    good = f"{PREFIX}/subnets/10.20.7.0-24"
    reserved = f"{PREFIX}/subnets/10.20.8.0-24"
    etcd_v2.v2_put(good, lease_value("198.18.0.7", "02:00:00:00:00:07"), ttl=3600)
    etcd_v2.v2_put(reserved, lease_value("198.18.0.8", "02:00:00:00:00:08"))  # no TTL
    invalid = {
        f"{PREFIX}/subnets/10.20.10.0-24": ("{broken", "bad_json"),
        f"{PREFIX}/subnets/10.99.1.0-24": (lease_value("198.18.0.11", "02:00:00:00:00:0b"),
                                           "outside_network"),
        f"{PREFIX}/subnets/10.20.12.0-24": (lease_value("198.18.0.7", "02:00:00:00:00:0c"),
                                            "duplicate_public_ip"),
        f"{PREFIX}/subnets/10.20.13.0-24": (lease_value("10.20.0.9", "02:00:00:00:00:0d"),
                                            "bad_public_ip"),
    }  # fmt: skip
    for key, (value, _) in invalid.items():
        etcd_v2.v2_put(key, value, ttl=3600)
    requests.put(f"{etcd_v2.endpoint}/v2/keys{PREFIX}/subnets/junk", data={"dir": "true"},
                 timeout=10).raise_for_status()  # fmt: skip

    dry = run(etcd_v2, "config", "import-v2", "--with-leases", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert v3_keys(etcd_v2) == {}  # a dry run writes nothing
    assert "would copy reservation 10.20.8.0/24 of 198.18.0.8, no TTL" in dry.stdout
    assert dry.stdout.splitlines()[-1] == f"would write {PREFIX}/config to the v3 store"

    result = run(etcd_v2, "config", "import-v2", "--with-leases")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for key, (_, reason) in invalid.items():
        assert any(line.startswith(f"skipped {key}: ") and f"[{reason}]" in line for line in lines)
    assert f"skipped {PREFIX}/subnets/junk: a directory, not a lease [bad_key]" in lines
    assert "copied reservation 10.20.8.0/24 of 198.18.0.8, no TTL" in lines
    stored = v3_keys(etcd_v2)
    assert set(stored) == {f"{PREFIX}/config", good, reserved}  # nothing invalid was copied
    with Registry(etcd_v2.endpoint, PREFIX) as reg:
        assert reg.etcd.get(reserved).lease == 0  # still a reservation: no TTL
        assert reg.etcd.get(good).lease != 0
    table = run(etcd_v2, "leases", "list")
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:-1]}
    assert rows["10.20.8.0/24"][4] == "reserved"

    again = run(etcd_v2, "config", "import-v2", "--with-leases")  # nothing left to do
    assert again.exit_code == 0, again.output
    assert f"skipped {good}: the v3 store holds this subnet with the same value already" in (
        again.stdout.splitlines()
    )
    assert (
        again.stdout.splitlines()[-1]
        == f"the v3 store holds an equal {PREFIX}/config: left as it is"
    )
    assert v3_keys(etcd_v2) == stored


def test_a_different_v3_config_is_kept_unless_forced(etcd_v2: EtcdServer) -> None:
    etcd_v2.v2_put(f"{PREFIX}/config", SEED)
    etcd_v2.v2_put(f"{PREFIX}/subnets/10.20.5.0-24", lease_value("198.18.0.5", "02:00:00:00:00:05"),
                   ttl=600)  # fmt: skip
    other = '{"Network": "10.30.0.0/16", "Backend": {"Type": "vxlan"}}'
    with Registry(etcd_v2.endpoint, PREFIX) as reg:
        reg.set_config(other)
    refused = run(etcd_v2, "config", "import-v2", "--with-leases")
    assert_operator_error(refused, f"the v3 store holds a different {PREFIX}/config")
    assert "--force replaces it" in refused.stderr
    assert v3_keys(etcd_v2) == {f"{PREFIX}/config": other.encode()}  # nothing was written

    dry = run(etcd_v2, "config", "import-v2", "--force", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[-2:] == [
        f"would replace the v3 store's different {PREFIX}/config",
        "1 entries under the v2 store's subnets/ not copied (--with-leases copies the valid ones)",
    ]
    assert v3_keys(etcd_v2) == {f"{PREFIX}/config": other.encode()}

    forced = run(etcd_v2, "config", "import-v2", "--force")
    assert forced.exit_code == 0, forced.output
    assert f"replaced the v3 store's different {PREFIX}/config" in forced.stdout.splitlines()
    assert v3_keys(etcd_v2) == {f"{PREFIX}/config": SEED.encode()}  # no leases without the flag

    # the same config, written otherwise (defaults left out): equal, left as it is
    same = '{"Network": "10.20.0.0/16", "Backend": {"Type": "vxlan"}}'
    with Registry(etcd_v2.endpoint, PREFIX) as reg:
        reg.set_config(same)
    kept = run(etcd_v2, "config", "import-v2")
    assert kept.exit_code == 0, kept.output
    assert f"the v3 store holds an equal {PREFIX}/config: left as it is" in kept.stdout
    assert v3_keys(etcd_v2)[f"{PREFIX}/config"] == same.encode()


def test_an_invalid_v2_config_is_refused_with_its_reason(etcd_v2: EtcdServer) -> None:
    etcd_v2.v2_put(f"{PREFIX}/config", '{"Network": "10.20.0.0/16", "Backend": {"Type": "udp"}}')
    result = run(etcd_v2, "config", "import-v2", "--with-leases")
    assert_operator_error(result, f"the v2 store's {PREFIX}/config is invalid: Backend.Type")
    assert v3_keys(etcd_v2) == {}


@pytest.fixture
def v2_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of every request to etcd's v2 API this process sends (sent as usual)."""
    urls: list[str] = []
    send = requests.Session.send

    def recording_send(self, request, **kwargs):
        if "/v2/" in request.url:
            urls.append(request.url)
        return send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", recording_send)
    return urls


def test_without_v2_the_errors_are_unchanged_and_cost_one_request(
    etcd: EtcdServer, v2_requests: list[str]
) -> None:
    """etcd 3.4 without --enable-v2 (3.5's default): the v3 errors as they always were."""
    config = f"{PREFIX}/config"
    expected = {
        ("config", "show"): f"Error: no network config at {config}: write one with "
                            "`vxflow config set FILE`",
        ("leases", "list"): f"Error: no valid network config at {config}: network config is "
                            "missing",
        ("services", "list"): f"Error: no valid network config at {config}",
        ("flows", "show", "--node", "198.18.0.5"): f"Error: no valid network config at {config}",
    }  # fmt: skip
    for args, line in expected.items():
        v2_requests.clear()
        result = run(etcd, *args)
        assert result.exit_code == 1 and result.stderr.strip() == line, (args, result.output)
        assert v2_requests == [f"{etcd.endpoint}/v2/keys{config}"], args
    v2_requests.clear()
    status = run(etcd, "status")
    assert status.exit_code == 1 and (
        f"\n- no valid network config: {config}: network config is missing (controller "
        "replicas register only once there is one)\n") in status.stdout
    assert v2_requests == [f"{etcd.endpoint}/v2/keys{config}"]
    with Registry(etcd.endpoint, PREFIX) as reg, pytest.raises(ConfigMissing) as missing:
        reg.get_config()
    assert str(missing.value) == expected["config", "show"].removeprefix("Error: ")
    result = run(etcd, "config", "import-v2", "--with-leases")
    assert_operator_error(result, "serves no v2 API: etcd 3.4 needs --enable-v2=true")


V2_ROOT = ("root", "v2-root-password")


def v2_auth(etcd: EtcdServer, method: str, path: str, body: dict | None = None,
            auth: tuple[str, str] | None = None) -> None:
    """One request to the v2 store's auth API (which has users of its own)."""
    assert etcd.tls is not None
    requests.request(method, f"{etcd.endpoint}/v2/auth/{path}", json=body, auth=auth,
                     verify=str(etcd.tls.ca), cert=(str(etcd.tls.cert), str(etcd.tls.key)),
                     timeout=10).raise_for_status()  # fmt: skip


def test_v2_reads_use_the_tls_files_and_credentials_of_v3(tmp_path: Path) -> None:
    """etcd over TLS with client certificates, auth on in v3 and in v2 (whose users are its
    own): the v2 store is read with the same files, the password as basic auth."""
    ca = make_pki(tmp_path / "pki")
    etcd = locked_etcd(ca, PREFIX, enable_v2=True)
    try:
        etcd.v2_put(f"{PREFIX}/config", SEED)
        # the v2 store's own auth: ETCD_USER reads and writes PREFIX only, with a password
        # that is not the v3 one (v2 refuses the user's); no anonymous access (v2's guest)
        keys = [f"{PREFIX}/*"]
        v2_auth(etcd, "PUT", "users/root", {"user": "root", "password": V2_ROOT[1]})
        v2_auth(etcd, "PUT", "roles/net", {"role": "net", "permissions": {"kv": {"read": keys,
                                                                                 "write": keys}}})
        v2_auth(etcd, "PUT", f"users/{ETCD_USER}", {"user": ETCD_USER, "password": "v2-password",
                                                    "roles": ["net"]})
        v2_auth(etcd, "PUT", "enable", auth=V2_ROOT)
        v2_auth(etcd, "DELETE", "roles/guest", auth=V2_ROOT)
        env = {"FLANNELD_ETCD_PREFIX": PREFIX, **etcd_env(etcd, ca.node("198.18.0.1"))}

        def invoke(*args: str) -> Result:
            return CliRunner().invoke(cli, ["--log-level", "error", *args], env=env)

        shown = invoke("config", "show")  # v2 refused: the v3 error as it always was
        assert shown.exit_code == 1
        assert shown.stderr.strip() == (
            f"Error: no network config at {PREFIX}/config: write one with `vxflow config set FILE`"
        )
        assert_operator_error(invoke("config", "import-v2"), "etcd refused a read of its v2 store")

        v2_auth(etcd, "PUT", f"users/{ETCD_USER}", {"user": ETCD_USER, "password": ETCD_PASSWORD},
                auth=V2_ROOT)  # the same password in both stores now
        shown = invoke("config", "show")
        assert_operator_error(shown, "etcd's v2 store holds one there")
        assert "(with this command's TLS/credential options)" in shown.stderr
        imported = invoke("config", "import-v2", "--with-leases")
        assert imported.exit_code == 0, imported.output
        assert invoke("config", "show", "--raw").stdout.strip() == SEED
    finally:
        etcd.stop()


def readme_steps() -> tuple[list[str], list[str], str]:
    """README's v2 steps and their v3 equivalents (the table's two columns), and the
    import line, as shown."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### etcd's v3 API, and the seed's v2 steps")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    cells = [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]
    first = [c[0].strip("`") for c in cells]
    second = [c[1].split("`")[1] for c in cells]
    (import_line,) = [line.strip("`") for line in section.split("\n") if "import-v2" in line
                      and line.startswith("`")]  # fmt: skip
    return first, second, import_line


def test_the_readme_steps_as_typed(etcd_v2: EtcdServer, tmp_path: Path) -> None:
    """The seed's v2 steps, then vxflow's: detected, imported, and the v3 equivalents."""
    seed, v3, import_line = readme_steps()
    assert [line.split()[0] for line in seed] == ["ETCDCTL_API=2", "curl", "ETCDCTL_API=2",
                                                  "ETCDCTL_API=2"]  # fmt: skip
    venv = str(Path(sys.executable).parent)
    env = {**os.environ, "ETCDCTL_ENDPOINTS": etcd_v2.endpoint,
           "FLANNELD_ETCD_ENDPOINTS": etcd_v2.endpoint, "PATH": f"{venv}:{os.environ['PATH']}"}  # fmt: skip

    def sh(line: str) -> str:
        line = line.replace("http://127.0.0.1:2379", etcd_v2.endpoint)  # etcd's default, shown
        out = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, (line, out.stderr)
        return out.stdout

    config = json.loads(seed[0].split("'")[1])
    etcd_v2.v2_put(f"{PREFIX}/subnets/10.20.5.0-24", lease_value("198.18.0.5", "02:00:00:00:00:05"),
                   ttl=600)  # a node of the seed's flannel  # fmt: skip
    sh(seed[0])  # etcdctl mk
    sh(seed[1])  # curl, over it
    assert json.loads(sh(seed[2])) == config
    assert sh(seed[3]).split() == [f"{PREFIX}/subnets/10.20.5.0-24"]
    missing = subprocess.run(v3[2], shell=True, env=env, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert missing.returncode == 1 and "etcd's v2 store holds one there" in missing.stderr

    assert import_line == f"vxflow config import-v2 --etcd-prefix {PREFIX} --with-leases"
    assert "copied lease 10.20.5.0/24 of 198.18.0.5" in sh(import_line)
    assert json.loads(sh(v3[2]))["Network"] == config["Network"]
    assert "10.20.5.0/24" in sh(v3[3])

    sh(v3[0])  # etcdctl put: the same config, in v3
    (tmp_path / "net.json").write_text(json.dumps(config))
    assert sh(v3[1]).startswith(f"wrote {PREFIX}/config: Network 10.20.0.0/16")
    assert json.loads(v3_keys(etcd_v2)[f"{PREFIX}/config"]) == config


def test_the_controller_names_a_v2_config_too(etcd_v2: EtcdServer, tmp_path: Path) -> None:
    """`vxflow controller` on a prefix only the v2 store configures logs where the config is
    and the command that copies it."""
    etcd_v2.v2_put(f"{PREFIX}/config", SEED)
    controller = Controller(etcd_v2.endpoint, prefix=PREFIX).start(tmp_path)
    try:
        wait_for("the controller's warning", lambda: "etcd's v2 store holds one" in controller.log())
        fix = f"vxflow config import-v2 --etcd-endpoints {etcd_v2.endpoint} --etcd-prefix {PREFIX}"
        assert f"`{fix} --with-leases`" in controller.log()
        assert "Traceback" not in controller.log()
    finally:
        controller.stop()


def test_status_names_a_v2_config(etcd_v2: EtcdServer) -> None:
    etcd_v2.v2_put(f"{PREFIX}/config", SEED)
    result = run(etcd_v2, "status")
    assert result.exit_code == 1, result.output
    assert "no valid network config in etcd's v3 store, which vxflow reads; etcd's v2 store " \
           "holds one there" in result.stdout  # fmt: skip
