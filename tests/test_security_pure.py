"""Pure logic of the security features: certificates, etcd error classification, options."""

from __future__ import annotations

import stat
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from etcd3gw.exceptions import ConnectionFailedError, Etcd3Exception

from leases.etcd_client import EtcdAccess, access_problem, plain_http_hint, tls_problem
from ovsdb.sysconfig import parse_sysconfig
from vxflow import pki
from vxflow.cli import cli


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_pki_makes_a_ca_and_leaves_with_the_documented_names(tmp_path: Path) -> None:
    ca = pki.init_ca(tmp_path)
    node = pki.issue_node(tmp_path, IPv4Address("198.18.0.7"))
    server = pki.issue_server(tmp_path, "controller", ["127.0.0.1", "198.18.0.254"], ["ctl"])
    client = pki.issue_client(tmp_path, "operator")
    assert stat.S_IMODE(ca.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(node.key.stat().st_mode) == 0o600
    root = _load(ca.cert)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for issued in (node, server, client):
        cert = _load(issued.cert)
        assert cert.issuer == root.subject
        root.public_key().verify(  # signed by the CA (raises if not)
            cert.signature, cert.tbs_certificate_bytes, _ecdsa(cert)
        )
        # no CN: etcd's gateway refuses client certificates that carry one
        assert not cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    sans = _load(node.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [IPv4Address("198.18.0.7")]
    server_cert = _load(server.cert)
    usage = server_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    names = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "198.18.0.254",
    ]
    assert names.get_values_for_type(x509.DNSName) == ["ctl"]
    client_usage = _load(client.cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(client_usage.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def _ecdsa(cert: x509.Certificate):
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.ECDSA(cert.signature_hash_algorithm)


def test_pki_command_as_the_help_shows_it(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    runner = CliRunner()
    for args in (
        ["pki", "init", d],
        ["pki", "node", d, "10.140.0.4"],
        ["pki", "server", d, "controller", "--ip", "10.140.0.2"],
        ["pki", "server", d, "etcd", "--ip", "10.140.0.2"],
        ["pki", "client", d, "operator"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert result.output.startswith("wrote ")
    # what `vxflow pki --help` and `pki node --help` say is written
    cert = x509.load_pem_x509_certificate((tmp_path / "pki" / "node-10.140.0.4.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "OU=node 10.140.0.4,O=vxflow"
    assert not cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [IPv4Address("10.140.0.4")]
    helps = runner.invoke(cli, ["pki", "--help"]).output + runner.invoke(
        cli, ["pki", "node", "--help"]).output  # fmt: skip
    assert "(IP SAN = PublicIP)" in helps and "OU=node PUBLIC_IP, no CN" in helps
    assert "CN, IP SAN" not in helps
    again = runner.invoke(cli, ["pki", "init", d])
    assert again.exit_code == 1 and "exists (pass --force" in again.output
    assert "Traceback" not in again.output
    missing = runner.invoke(cli, ["pki", "node", str(tmp_path / "nothing"), "10.0.0.1"])
    assert missing.exit_code == 1 and "no CA in" in missing.output
    bad = runner.invoke(cli, ["pki", "server", d, "x", "--ip", "not-an-ip"])
    assert bad.exit_code == 1 and "does not appear to be an IPv4 or IPv6 address" in bad.output


def test_etcd_access_checks_pairs_and_hides_the_password() -> None:
    access = EtcdAccess(username="u", password="very-secret")
    assert "very-secret" not in repr(access) and "'username': 'u'" in repr(access)
    with pytest.raises(ValueError, match="go together"):
        EtcdAccess(certfile="c.pem")
    with pytest.raises(ValueError, match="needs --etcd-username"):
        EtcdAccess(password="p")
    with pytest.raises(ValueError, match="needs --etcd-password"):
        EtcdAccess(username="u")


def test_etcd_refusals_are_told_apart_from_outages() -> None:
    def gateway(message: str, code: int) -> Etcd3Exception:
        return Etcd3Exception(f'{{"error":"{message}","message":"{message}","code":{code}}}')

    assert "check --etcd-username and --etcd-password" in access_problem(
        gateway("etcdserver: authentication failed, invalid user ID or password", 3)
    )
    assert "role does not grant" in access_problem(gateway("etcdserver: permission denied", 7))
    assert access_problem(gateway("mvcc: required revision has been compacted", 11)) is None
    verify = ConnectionFailedError(
        "HTTPSConnectionPool(host='127.0.0.1', port=2379): Max retries exceeded (Caused by "
        "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
        "verify failed: unable to get local issuer certificate (_ssl.c:992)')))"
    )
    assert tls_problem(verify) == (
        "certificate verify failed: unable to get local issuer certificate "
        "(etcd's certificate is not signed by --etcd-cafile)"
    )
    eof = ConnectionFailedError(
        "(Caused by SSLError(SSLEOFError(8, 'EOF occurred in violation of protocol "
        "(_ssl.c:2393)')))"
    )
    assert tls_problem(eof).startswith("EOF occurred in violation of protocol (etcd dropped")
    assert tls_problem(ConnectionFailedError("[Errno 111] Connection refused")) is None


def test_a_tls_endpoint_given_as_http_gets_the_hint_however_it_hangs_up() -> None:
    url = "http://127.0.0.1:2379"
    for text in ("('Connection aborted.', RemoteDisconnected('Remote end closed connection "
                 "without response'))",
                 "('Connection aborted.', ConnectionResetError(104, 'Connection reset by "
                 "peer'))"):  # fmt: skip
        assert "use an https:// URL" in plain_http_hint(url, ConnectionFailedError(text))
        assert plain_http_hint(url.replace("http:", "https:"), ConnectionFailedError(text)) == ""
    assert plain_http_hint(url, ConnectionFailedError("[Errno 111] Connection refused")) == ""


def test_sysconfig_takes_flannels_etcd_tls_flags() -> None:
    parsed = parse_sysconfig(
        'FLANNEL_OPTIONS="-etcd-cafile=/etc/pki/ca.pem -etcd-certfile=/etc/pki/n.pem '
        '-etcd-keyfile=/etc/pki/n-key.pem -etcd-username=flannel -etcd-password=pw"\n'
    )
    assert parsed.values == {
        "etcd_cafile": "/etc/pki/ca.pem",
        "etcd_certfile": "/etc/pki/n.pem",
        "etcd_keyfile": "/etc/pki/n-key.pem",
        "etcd_username": "flannel",
        "etcd_password": "pw",
    }
    assert parsed.ignored == []


def test_only_the_controllers_process_is_patched_for_eventlet() -> None:
    """The patch must come before requests imports ssl, and only where the hub runs."""
    from vxflow.cli import _subcommand

    assert _subcommand(["--log-level", "debug", "controller", "--port", "1"]) == "controller"
    assert _subcommand(["controller"]) == "controller"
    assert _subcommand(["--log-level=info", "leases", "list"]) == "leases"
    assert _subcommand(["--help"]) is None
