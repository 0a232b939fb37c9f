"""Certificates and a locked-down etcd for the security tests (made fresh by each test)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from leases.etcd_server import EtcdServer, EtcdUser, ServerTLS
from vxflow import pki

ETCD_USER = "vxflow"
ETCD_PASSWORD = "s3cret-vxflow"
ROOT_PASSWORD = "s3cret-root"


@dataclass(frozen=True)
class Pki:
    """A cluster CA in `directory` and helpers naming the files `vxflow pki` writes."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / pki.CA_CERT

    def node(self, ip: IPv4Address | str) -> pki.Issued:
        issued = pki.Issued(
            self.directory / f"node-{ip}.pem", self.directory / f"node-{ip}-key.pem"
        )
        return issued if issued.cert.exists() else pki.issue_node(self.directory, IPv4Address(ip))

    def server(self, name: str, *ips: str) -> pki.Issued:
        return pki.issue_server(self.directory, name, ips or ("127.0.0.1",))


def make_pki(directory: Path) -> Pki:
    pki.init_ca(directory)
    return Pki(directory)


def locked_etcd(ca: Pki, prefix: str, **server: object) -> EtcdServer:
    """etcd over TLS with --client-cert-auth and auth on: user ETCD_USER may use `prefix`/."""
    cert = ca.server("etcd", "127.0.0.1", *([str(server["host"])] if "host" in server else []))
    etcd = EtcdServer(tls=ServerTLS(cert.cert, cert.key, ca.ca), **server).start()  # type: ignore[arg-type]
    try:
        etcd.enable_auth(ROOT_PASSWORD, [EtcdUser(ETCD_USER, ETCD_PASSWORD, prefix + "/")])
    except Exception:
        etcd.stop()
        raise
    return etcd


def etcd_env(etcd: EtcdServer, client: pki.Issued, user: str | None = ETCD_USER,
             password: str | None = ETCD_PASSWORD) -> dict[str, str]:
    """FLANNELD_ETCD_* for a client of `etcd` with `client`'s certificate."""
    assert etcd.tls is not None
    env = {
        "FLANNELD_ETCD_ENDPOINTS": etcd.endpoint,
        "FLANNELD_ETCD_CAFILE": str(etcd.tls.ca),
        "FLANNELD_ETCD_CERTFILE": str(client.cert),
        "FLANNELD_ETCD_KEYFILE": str(client.key),
    }
    if user is not None:
        env["FLANNELD_ETCD_USERNAME"] = user
    if password is not None:
        env["FLANNELD_ETCD_PASSWORD"] = password
    return env
