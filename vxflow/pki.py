"""A small certificate authority for one vxflow cluster: `vxflow pki ...`.

Certificates are what TLS on OpenFlow and etcd need, in the files OVS, os-ken
and etcd read (PEM). Conventions the controller relies on:

- a node's certificate names its PublicIP as an IP subjectAltName; the
  controller accepts a switch only if the certificate it presented names the
  PublicIP its datapath-id claims (controller/identity.py);
- no leaf has a subject CN: etcd (3.4 and later) refuses every request to its
  JSON gateway, which vxflow uses, whose client certificate carries one while
  auth and client-cert-auth are both on; etcd users are named by
  --etcd-username instead, and one node certificate serves OpenFlow and etcd;
- a server certificate (the controller, etcd) names its listening addresses
  and DNS names as subjectAltNames, so clients verify them by address.

Keys are ECDSA P-256 (short handshakes; OVS, OpenSSL and Python all take them)
and are written with mode 0600. Nothing is ever overwritten without --force.
"""

from __future__ import annotations

import datetime
import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any, TypeVar

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity TLS clients still accept for a leaf

F = TypeVar("F", bound=Callable[..., Any])


class PkiError(RuntimeError):
    """A certificate cannot be made (missing CA, file in the way, bad name)."""


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vxflow"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _leaf_name(label: str) -> x509.Name:
    """O=vxflow, OU=label, and no CN: etcd refuses a gateway request whose client
    certificate has a CN once auth and client-cert-auth are on (CVE-2018-16886)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vxflow"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, label),
        ]
    )


def _write(path: Path, data: bytes, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise PkiError(f"{path} exists (pass --force to replace it)")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600 if private else 0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def init_ca(directory: Path, name: str = "vxflow cluster CA", force: bool = False) -> Issued:
    """A self-signed CA in `directory` (ca.pem, ca-key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_ca_name(name))
        .issuer_name(_ca_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    issued = Issued(directory / CA_CERT, directory / CA_KEY)
    _write(issued.key, _pem_key(key), private=True, force=force)
    _write(issued.cert, _pem_cert(cert), private=False, force=force)
    return issued


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError as exc:
        raise PkiError(f"no CA in {directory}: run `vxflow pki init {directory}` first") from exc
    except ValueError as exc:
        raise PkiError(f"the CA in {directory} cannot be read: {exc}") from exc
    return cert, key  # type: ignore[return-value]


def issue(
    directory: Path,
    stem: str,
    label: str,
    ips: Iterable[str] = (),
    dns: Iterable[str] = (),
    server: bool = False,
    force: bool = False,
) -> Issued:
    """A leaf signed by the CA in `directory`: STEM.pem and STEM-key.pem beside it.

    Its subject is O=vxflow, OU=`label` (for people); what it stands for is in
    its subjectAltNames.

    Every leaf may authenticate as a TLS client; `server` adds serverAuth.
    """
    ca_cert, ca_key = _load_ca(directory)
    try:
        addresses = [ip_address(ip) for ip in ips]
    except ValueError as exc:
        raise PkiError(str(exc)) from exc
    names: list[x509.GeneralName] = [x509.IPAddress(a) for a in addresses]
    names += [x509.DNSName(d) for d in dns]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_leaf_name(label))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    issued = Issued(directory / f"{stem}.pem", directory / f"{stem}-key.pem")
    _write(issued.key, _pem_key(key), private=True, force=force)
    _write(issued.cert, _pem_cert(cert), private=False, force=force)
    return issued


def issue_node(directory: Path, public_ip: IPv4Address, force: bool = False) -> Issued:
    """node-<PublicIP>.pem: IP SAN = the PublicIP (the identity the controller checks)."""
    return issue(directory, f"node-{public_ip}", f"node {public_ip}", ips=[str(public_ip)],
                 force=force)  # fmt: skip


def issue_server(
    directory: Path, name: str, ips: Iterable[str], dns: Iterable[str] = (), force: bool = False
) -> Issued:
    """<name>.pem for a TLS server (the controller, etcd), also usable as a client."""
    if not name or "/" in name or name.startswith("."):
        raise PkiError(f"{name!r} is not usable as a file name")
    return issue(directory, name, f"server {name}", ips=ips, dns=dns, server=True, force=force)


def issue_client(directory: Path, name: str, force: bool = False) -> Issued:
    """<name>.pem for a client only (an operator's CLI, a user named in etcd's auth)."""
    if not name or "/" in name or name.startswith("."):
        raise PkiError(f"{name!r} is not usable as a file name")
    return issue(directory, name, f"client {name}", force=force)


# -- the command ----------------------------------------------------------------

dir_argument = click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
force_option = click.option("--force", is_flag=True, help="Replace files that exist.")


def _report(issued: Issued) -> None:
    click.echo(f"wrote {issued.cert} and {issued.key}")


def _pki_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (PkiError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


@click.group()
def pki() -> None:
    """Make a cluster's CA and the certificates for TLS on OpenFlow and etcd.

    \b
    vxflow pki init /etc/vxflow/pki                     # ca.pem, ca-key.pem
    vxflow pki node /etc/vxflow/pki 10.140.0.4          # one per node (IP SAN = PublicIP)
    vxflow pki server /etc/vxflow/pki controller --ip 10.140.0.2
    vxflow pki server /etc/vxflow/pki etcd --ip 10.140.0.2
    vxflow pki client /etc/vxflow/pki operator          # the CLI's etcd client certificate

    Every leaf's subject is O=vxflow, OU=<what it is> (e.g. "node 10.140.0.4")
    and no CN: etcd refuses gateway requests whose client certificate has one
    (with auth and client-cert-auth on). A node is named by its PublicIP as an
    IP subjectAltName, which the controller checks against the datapath-id.
    """


@pki.command("init")
@dir_argument
@click.option("--name", default="vxflow cluster CA", show_default=True, help="The CA's CN.")
@force_option
@_pki_errors
def init_command(directory: Path, name: str, force: bool) -> None:
    """Create the CA (DIRECTORY/ca.pem and ca-key.pem; keep ca-key.pem offline)."""
    _report(init_ca(directory, name, force))


@pki.command("node")
@dir_argument
@click.argument("public_ips", nargs=-1, required=True, type=IPv4Address, metavar="PUBLIC_IP...")
@force_option
@_pki_errors
def node_command(directory: Path, public_ips: tuple[IPv4Address, ...], force: bool) -> None:
    """A certificate per node (node-PUBLIC_IP.pem, -key.pem): its PublicIP as an IP
    subjectAltName, subject O=vxflow, OU=node PUBLIC_IP, no CN."""
    for ip in public_ips:
        _report(issue_node(directory, ip, force))


@pki.command("server")
@dir_argument
@click.argument("name")
@click.option("--ip", "ips", multiple=True, required=True,
              help="An address clients connect to (repeatable).")  # fmt: skip
@click.option("--dns", multiple=True, help="A DNS name clients connect to (repeatable).")
@force_option
@_pki_errors
def server_command(
    directory: Path, name: str, ips: tuple[str, ...], dns: tuple[str, ...], force: bool
) -> None:
    """A server certificate (NAME.pem, NAME-key.pem) for the controller or etcd."""
    _report(issue_server(directory, name, ips, dns, force))


@pki.command("client")
@dir_argument
@click.argument("name")
@force_option
@_pki_errors
def client_command(directory: Path, name: str, force: bool) -> None:
    """A client-only certificate (NAME.pem, NAME-key.pem), e.g. for the CLI."""
    _report(issue_client(directory, name, force))
