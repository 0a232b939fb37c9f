"""Who a switch is: its datapath-id claims a PublicIP; over TLS its certificate must name it.

A vxflow node's datapath-id is derived from its PublicIP (`leases.model`), so
the handshake alone says which node a switch speaks for — and over plain TCP
anything that reaches the controller port can claim to be any node. With TLS
the controller requires a certificate signed by the cluster's CA (os-ken's
listener, CERT_REQUIRED) and this module binds the two: the certificate must
name the claimed PublicIP as an IP subjectAltName (what `vxflow pki node`
writes) or, for certificates made elsewhere, as its subject CN. A switch that
fails is logged, counted (`vxflow_controller_switches_refused{reason}`) and
disconnected before it is given any flow, and before it can displace the
switch that really holds that datapath-id.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address, ip_address
from typing import Any

from controller import metrics

log = logging.getLogger("controller")

PeerCert = dict[str, Any]  # ssl.SSLSocket.getpeercert(): the verified certificate, decoded


def certificate_addresses(cert: PeerCert) -> set[IPv4Address]:
    """The IPv4 addresses a certificate names: IP subjectAltNames and an address-shaped CN."""
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "IP Address"]
    names += [value for rdn in cert.get("subject", ()) for key, value in rdn
              if key == "commonName"]  # fmt: skip
    found = set()
    for name in names:
        try:
            address = ip_address(name.strip())
        except ValueError:
            continue
        if isinstance(address, IPv4Address):
            found.add(address)
    return found


def identity_problem(node: IPv4Address, cert: PeerCert | None) -> str | None:
    """Why a TLS switch claiming `node` must be refused (None: its certificate names it)."""
    if not cert:
        return "presented no verified certificate"
    named = certificate_addresses(cert)
    if node in named:
        return None
    shown = ", ".join(sorted(map(str, named))) or "no IPv4 address"
    return f"its certificate names {shown}, not {node}"


def peer_certificate(sock: object) -> PeerCert | None:
    """The verified peer certificate of a TLS socket; None for plain TCP."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        return getpeercert() or None
    except (OSError, ValueError):  # the connection went away meanwhile
        return None


def admit(datapath, node: IPv4Address) -> bool:
    """Whether a TLS switch claiming `node` may stay; if not, log, count and disconnect it."""
    problem = identity_problem(node, peer_certificate(datapath.socket))
    if problem is None:
        return True
    metrics.REFUSED.labels("identity").inc()
    log.warning(
        "refused switch %016x from %s: its datapath-id claims node %s, but %s",
        datapath.id, datapath.address, node, problem,
    )  # fmt: skip
    datapath.close()
    return False
