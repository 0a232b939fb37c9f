"""etcd v3 through its JSON gateway (etcd3gw), with endpoint failover and revisions.

etcd3gw's helpers drop what the registry needs (the header revision of a
range, compaction and cancel responses of a watch, a watch stream that ends),
so this module calls the gateway's endpoints through etcd3gw's client and
session directly. Every transport failure becomes `EtcdUnavailable`; a
refusal that waiting does not heal (a TLS certificate problem, a wrong or
missing password, no permission on the prefix) becomes `EtcdAccessDenied`.

Credentials: etcd's gateway takes a username and password only at
`/v3/auth/authenticate`, which returns a token that every later request
carries in its Authorization header. The token is fetched per endpoint on
first use and again when etcd says it expired (simple tokens lapse after
`--auth-token-ttl` of disuse, 5 minutes by default).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions
from etcd3gw.client import Etcd3Client
from etcd3gw.exceptions import (
    ConnectionFailedError,
    ConnectionTimeoutError,
    Etcd3Exception,
    InternalServerError,
)

from leases.errors import EtcdAccessDenied, EtcdUnavailable
from leases.keys import KV

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"  # flanneld's default --etcd-endpoints

GRPC_NOT_FOUND = 5
GRPC_PERMISSION_DENIED = 7
GRPC_OUT_OF_RANGE = 11  # "mvcc: required revision has been compacted"
GRPC_UNAUTHENTICATED = 16  # "etcdserver: invalid auth token"

# What etcd answers for each access problem, and what the operator should check.
_ACCESS_HINTS = (
    ("user name is empty", "etcd requires authentication: pass --etcd-username/--etcd-password"),
    ("authentication failed", "check --etcd-username and --etcd-password"),
    ("authentication is not enabled", "etcd has no auth enabled: drop --etcd-username"),
    ("permission denied", "the etcd user's role does not grant this key range"),
    ("invalid auth token", "the token was refused again after re-authenticating"),
    ("HTTP request to an HTTPS server", "the endpoint speaks TLS: use an https:// URL"),
    ("CommonName of client", "etcd refuses client certificates with a CN on its gateway "
                             "(use `vxflow pki` certificates, which carry none)"),
)  # fmt: skip

# how a TLS endpoint ends a plain-HTTP connection when it does not answer it first:
# it hangs up, or resets the connection (both seen from etcd 3.4)
_TLS_HANGUPS = ("RemoteDisconnected", "Connection reset by peer")


@dataclass(frozen=True)
class EtcdAccess:
    """TLS files and credentials for etcd, as flanneld names them (--etcd-cafile, ...).

    `cafile` verifies the server (default: the system's CAs); `certfile` and
    `keyfile` are the client certificate etcd's --client-cert-auth asks for;
    `username`/`password` authenticate when etcd's auth is enabled.
    """

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("--etcd-certfile and --etcd-keyfile go together")
        if self.password and not self.username:
            raise ValueError("--etcd-password needs --etcd-username")
        if self.username and self.password is None:
            raise ValueError("--etcd-username needs --etcd-password (or FLANNELD_ETCD_PASSWORD)")

    def __repr__(self) -> str:  # never print the password
        shown = {k: v for k, v in vars(self).items() if v is not None and k != "password"}
        return f"EtcdAccess({shown})"

    def __str__(self) -> str:
        """How etcd is reached, in words (for a log line; never the password)."""
        parts = [f"CA file {self.cafile}" if self.cafile else "no CA file"]
        parts.append(f"client certificate {self.certfile}" if self.certfile else
                     "no client certificate")  # fmt: skip
        parts.append(f"user {self.username}" if self.username else "no user")
        return ", ".join(parts)


NO_ACCESS = EtcdAccess()
RANGE_PAGE = 4096  # keys per request when listing a whole prefix


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with `prefix`."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


def parse_endpoints(endpoints: str | Sequence[str]) -> tuple[str, ...]:
    """flanneld's comma-separated `--etcd-endpoints`, or a list of URLs."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    urls = tuple(item.strip().rstrip("/") for item in items if item.strip())
    if not urls:
        raise ValueError("no etcd endpoint given")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"etcd endpoint {url!r} is not http(s)://host:port")
    return urls


def kv_from_json(item: dict[str, Any]) -> KV:
    return KV(
        key=_unb64(item["key"]).decode("utf-8", "replace"),
        value=_unb64(item.get("value", "")),
        create_revision=int(item.get("create_revision", 0)),
        mod_revision=int(item.get("mod_revision", 0)),
        lease=int(item.get("lease", 0)),
    )


_TLS_ERROR = re.compile(
    r"\[SSL(?:: [A-Z0-9_]+)?\] ([^'\"()\]]+?)(?: \(_ssl\.c:\d+\))?['\")]"  # [SSL: X] reason
    r"|SSL\w*Error\(\d+, '([^']+?)(?: \(_ssl\.c:\d+\))?'"  # SSLEOFError(8, 'reason')
)
_TLS_HINTS = (
    ("certificate verify failed", "etcd's certificate is not signed by --etcd-cafile"),
    ("EOF occurred", "etcd dropped the handshake: it wants a client certificate it trusts "
                     "(--etcd-certfile/--etcd-keyfile)"),
    ("alert", "etcd refused the client certificate (--etcd-certfile/--etcd-keyfile)"),
)  # fmt: skip


def _text(exc: Exception) -> str:
    """An error's text (etcd3gw keeps it in detail_text, not in args)."""
    return str(getattr(exc, "detail_text", None) or exc)


def plain_http_hint(url: str, exc: Exception) -> str:
    """What to add to an http:// endpoint's failure that looks like a TLS server's hang-up."""
    if url.startswith("http:") and any(s in _text(exc) for s in _TLS_HANGUPS):
        return " (if the endpoint speaks TLS, use an https:// URL)"
    return ""


def tls_problem(exc: Exception) -> str | None:
    """The TLS reason inside a transport error, with a hint; None if it is not one."""
    text = _text(exc)
    m = _TLS_ERROR.search(text)
    if m is None:
        if "CA certificate bundle" in text:  # requests: --etcd-cafile unreadable
            return text[:200]
        return None
    reason = re.sub(r"^\[SSL(?:: [A-Z0-9_]+)?\] ", "", (m.group(1) or m.group(2)).strip())
    hint = next((h for needle, h in _TLS_HINTS if needle in reason), None)
    return f"{reason} ({hint})" if hint else reason


def access_problem(exc: Etcd3Exception) -> str | None:
    """etcd's reason for refusing vxflow (auth, permission, TLS), with a hint; None if
    the error is of another kind."""
    text = exc.detail_text or ""
    try:
        doc = json.loads(text)
        message, code = str(doc.get("message") or doc.get("error") or ""), doc.get("code")
    except (ValueError, AttributeError):
        message, code = text.strip(), None
    for needle, hint in _ACCESS_HINTS:
        if needle in message:
            return f"{message} ({hint})"
    if code in (GRPC_PERMISSION_DENIED, GRPC_UNAUTHENTICATED):
        return message
    return None


def _short(exc: Exception) -> str:
    """The operator-relevant part of a transport error ("Connection refused", "timed out")."""
    text = _text(exc)
    tls = tls_problem(exc)
    if tls:
        return f"TLS: {tls}"
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if m:
        return m.group(1)
    return "timed out" if "timed out" in text.lower() else f"{type(exc).__name__}: {text[:200]}"


def grpc_code(exc: Etcd3Exception) -> int | None:
    """The gRPC status code inside a gateway error response, if there is one."""
    try:
        return int(json.loads(exc.detail_text or "")["code"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "PUT" or "DELETE"
    kv: KV


@dataclass(frozen=True)
class WatchMessage:
    """One WatchResponse: events, a compaction notice, or a header-only progress notice."""

    revision: int  # header revision (0 when the gateway omits it)
    events: tuple[WatchEvent, ...] = ()
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""


class WatchStream:
    """A streaming watch over one key range; iterate messages, `close()` from any thread."""

    def __init__(
        self,
        session: requests.Session,
        url: str,
        request: dict[str, Any],
        connect_timeout: float,
        idle_timeout: float,
    ) -> None:
        """Open the stream; transport errors (requests') and HTTP errors (Etcd3Exception)
        propagate for EtcdClient.call to fail over or classify."""
        self.idle = False  # True when the stream ended because nothing arrived for idle_timeout
        self._resp = session.post(
            url, json=request, stream=True, timeout=(connect_timeout, idle_timeout)
        )
        if self._resp.status_code != 200:
            text = self._resp.text
            self._resp.close()
            raise Etcd3Exception(text.strip(), f"HTTP {self._resp.status_code}")

    def __iter__(self) -> Iterator[WatchMessage]:
        try:
            for line in self._resp.iter_lines():
                if line.strip():
                    yield self._message(json.loads(line))
        except requests.ConnectionError as exc:
            if exc.args and isinstance(exc.args[0], urllib3.exceptions.ReadTimeoutError):
                self.idle = True
                return
            raise EtcdUnavailable(f"watch stream broke: {exc}") from exc
        except (requests.RequestException, ValueError, AttributeError, OSError) as exc:
            # AttributeError/OSError: the response was closed under us by close()
            raise EtcdUnavailable(f"watch stream broke: {exc}") from exc

    @staticmethod
    def _message(chunk: dict[str, Any]) -> WatchMessage:
        if "error" in chunk:
            raise EtcdUnavailable(f"watch stream error: {chunk['error']}")
        result = chunk["result"]
        events = tuple(
            WatchEvent(ev.get("type", "PUT"), kv_from_json(ev["kv"]))
            for ev in result.get("events", ())
        )
        return WatchMessage(
            revision=int(result.get("header", {}).get("revision", 0)),
            events=events,
            created=bool(result.get("created", False)),
            canceled=bool(result.get("canceled", False)),
            compact_revision=int(result.get("compact_revision", 0)),
            cancel_reason=str(result.get("cancel_reason", "")),
        )

    def interrupt(self) -> None:
        """Wake the reader blocked on this stream; safe from any (green) thread."""
        try:
            sock = self._resp.raw._fp.fp.raw._sock  # the urllib3 connection's socket
            sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass

    def close(self) -> None:
        """Drop the connection; only from the thread that reads the stream."""
        self.interrupt()
        self._resp.close()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Session(requests.Session):
    """A session whose own `verify` (--etcd-cafile) wins: requests lets REQUESTS_CA_BUNDLE
    override Session.verify when a request passes none (psf/requests#3829)."""

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


class EtcdClient:
    """Unary etcd calls with failover across endpoints; one instance per user (not shared)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 5.0,
        access: EtcdAccess = NO_ACCESS,
    ) -> None:
        self.endpoints = parse_endpoints(endpoints)
        self.timeout = timeout
        self.access = access
        self._clients = [self._client(url) for url in self.endpoints]
        self._authenticated: set[int] = set()  # endpoints whose session holds a token
        self._current = 0

    def _client(self, url: str) -> Etcd3Client:
        parts = urlsplit(url)
        default_port = 443 if parts.scheme == "https" else 2379
        session = _Session()
        if self.access.cafile:
            session.verify = self.access.cafile
        if self.access.certfile and self.access.keyfile:
            session.cert = (self.access.certfile, self.access.keyfile)
        return Etcd3Client(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or default_port,
            protocol=parts.scheme,
            timeout=self.timeout,
            api_path="/v3/",
            session=session,
        )

    def _authenticate(self, idx: int) -> None:
        """Exchange the username and password for a token on endpoint `idx`."""
        client = self._clients[idx]
        client.session.headers.pop("Authorization", None)
        self._authenticated.discard(idx)
        body = {"name": self.access.username, "password": self.access.password}
        result = client.post(client.get_url("/auth/authenticate"), json=body)
        client.session.headers["Authorization"] = str(result["token"])
        self._authenticated.add(idx)

    def _on(self, idx: int, fn: Callable[[Etcd3Client], T]) -> T:
        """`fn` on endpoint `idx` with a valid token (fetched, or fetched again once)."""
        if self.access.username and idx not in self._authenticated:
            self._authenticate(idx)
        try:
            return fn(self._clients[idx])
        except Etcd3Exception as exc:
            if not self.access.username or grpc_code(exc) != GRPC_UNAUTHENTICATED:
                raise
        self._authenticate(idx)  # the token lapsed: once more with a fresh one
        return fn(self._clients[idx])

    def call(self, fn: Callable[[Etcd3Client], T]) -> T:
        """Run `fn` on the current endpoint, failing over to the others once each.

        A refusal (TLS, credentials, permission) raises EtcdAccessDenied at once
        when it is etcd's answer; a TLS failure is tried on every endpoint first.
        """
        errors, refused = [], False
        for i in range(len(self._clients)):
            idx = (self._current + i) % len(self._clients)
            try:
                result = self._on(idx, fn)
            except (
                ConnectionFailedError,
                ConnectionTimeoutError,
                InternalServerError,
                requests.RequestException,
            ) as exc:
                refused |= tls_problem(exc) is not None
                url = self.endpoints[idx]
                errors.append(f"{url}: {_short(exc)}{plain_http_hint(url, exc)}")
                continue
            except Etcd3Exception as exc:
                problem = access_problem(exc)
                if problem is None:
                    raise
                raise EtcdAccessDenied(f"etcd {self.endpoints[idx]} refused: {problem}") from exc
            self._current = idx
            return result
        if refused:
            raise EtcdAccessDenied("etcd TLS failed: " + "; ".join(errors))
        raise EtcdUnavailable("etcd unreachable: " + "; ".join(errors))

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.call(lambda c: c.post(c.get_url(path), json=body))

    def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        revision: int | None = None,
        page_size: int = 0,
    ) -> tuple[list[KV], int]:
        """Keys (one, or all under a prefix) and the store revision they were read at.

        `page_size` > 0 reads a large prefix in requests of that many keys, all at
        the first one's revision: no response of tens of megabytes to parse in one
        go, and a cooperative caller's hub runs while each page is on the wire.
        """
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        if revision is not None:
            body["revision"] = revision
        if page_size > 0:
            body["limit"] = page_size
        kvs: list[KV] = []
        while True:
            result = self.post("/kv/range", body)
            items = result.get("kvs", ())
            kvs += [kv_from_json(item) for item in items]
            body["revision"] = int(result["header"]["revision"])
            if not (page_size > 0 and result.get("more") and items):
                return kvs, body["revision"]
            body["key"] = _b64(_unb64(items[-1]["key"]) + b"\0")  # right after the last one

    def get(self, key: str) -> KV | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def put(self, key: str, value: str | bytes, lease: int | None = None) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = lease
        return int(self.post("/kv/put", body)["header"]["revision"])

    def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete a key (or a prefix); the number of keys deleted."""
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        return int(self.post("/kv/deleterange", body).get("deleted", 0))

    def put_if(
        self, key: str, value: str | bytes, *, mod_revision: int, lease: int | None = None
    ) -> bool:
        """Put only if the key's mod_revision is still `mod_revision` (0: only if absent)."""
        return self.put_all_if([(key, value, mod_revision)], lease=lease) is not None

    def put_all_if(
        self, items: Sequence[tuple[str, str | bytes, int | None]], *, lease: int | None = None
    ) -> int | None:
        """Put every (key, value) in one transaction, only if each key's mod_revision is still
        the one given (0: only if absent; None: whatever it is); the revision they were
        written at, or None.

        etcd bounds a transaction (--max-txn-ops, 128 by default): keep `items` below it.
        """
        compares, puts = [], []
        for key, value, mod_revision in items:
            target = (
                {"target": "CREATE", "create_revision": 0}
                if mod_revision == 0
                else {"target": "MOD", "mod_revision": mod_revision}
            )
            if mod_revision is not None:
                compares.append({"key": _b64(key), "result": "EQUAL", **target})
            put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
            if lease:
                put["lease"] = lease
            puts.append({"request_put": put})
        result = self.post("/kv/txn", {"compare": compares, "success": puts, "failure": []})
        if not result.get("succeeded", False):
            return None
        return int(result["header"]["revision"])

    def create_if_free(
        self,
        key: str,
        value: str | bytes,
        *,
        lease: int | None = None,
        free_prefix: str,
        replaces: tuple[str, int] | None = None,
        unchanged: tuple[str, int] | None = None,
    ) -> bool:
        """Create `key` in one transaction, only if no key starting with `free_prefix` exists
        and, with `unchanged` = (prefix, revision), no key under `prefix` was written after
        `revision`: a choice made from a listing at `revision` still holds. With `replaces`
        = (key, mod_revision) that key, if still at that revision, is deleted in the same
        transaction; `unchanged` then stands in for the `free_prefix` check (the replaced
        key may start with it) and must be given.
        """
        if replaces is not None and unchanged is None:
            raise ValueError("replacing a key needs `unchanged`")

        def over(prefix: str) -> dict[str, str]:
            return {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}

        compares: list[dict[str, Any]] = []
        success: list[dict[str, Any]] = []
        if replaces is not None:
            old, mod_revision = replaces
            compares.append(
                {"key": _b64(old), "result": "EQUAL", "target": "MOD", "mod_revision": mod_revision}
            )
            success.append({"request_delete_range": {"key": _b64(old)}})
        else:
            compares.append(
                {**over(free_prefix), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
            )
        compares.append(
            {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
        )
        if unchanged is not None:
            prefix, revision = unchanged
            compares.append(
                {**over(prefix), "result": "LESS", "target": "MOD", "mod_revision": revision + 1}
            )
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = lease
        success.append({"request_put": put})
        txn = {"compare": compares, "success": success, "failure": []}
        return bool(self.post("/kv/txn", txn).get("succeeded", False))

    def delete_if(self, key: str, *, mod_revision: int) -> bool:
        txn = {
            "compare": [
                {"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": mod_revision}
            ],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
            "failure": [],
        }
        return bool(self.post("/kv/txn", txn).get("succeeded", False))

    def grant(self, ttl: int) -> int:
        return int(self.post("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh a lease; its new TTL, or -1 if it has expired."""
        result = self.post("/lease/keepalive", {"ID": lease})
        return int(result.get("result", {}).get("TTL", -1))

    def time_to_live(self, lease: int) -> tuple[int, int]:
        """(remaining TTL or -1 if expired, granted TTL)."""
        result = self.post("/kv/lease/timetolive", {"ID": lease})
        return int(result.get("TTL", -1)), int(result.get("grantedTTL", 0))

    def revoke(self, lease: int) -> bool:
        """Revoke a lease (its keys vanish); False if it had already expired."""
        try:
            self.post("/kv/lease/revoke", {"ID": lease})
        except Etcd3Exception as exc:
            if grpc_code(exc) == GRPC_NOT_FOUND:
                return False
            raise
        return True

    def v2_get(self, key: str, *, recursive: bool = False) -> dict[str, Any] | None:
        """The node at `key` in etcd's v2 store (v2's JSON: key, value, ttl, dir, nodes),
        or None if it is absent or the server serves no v2 (etcd 3.4 without
        --enable-v2, 3.5+ by default): one request either way.

        The same endpoints, TLS files and failover as v3; etcd's v2 API takes the
        username and password as HTTP basic auth instead of a token.
        """
        auth = (self.access.username, self.access.password or "") if self.access.username else None
        params = {"recursive": "true"} if recursive else None
        resp = self.call(
            lambda c: c.session.get(
                c.base_url + "/v2/keys" + quote(key), params=params, auth=auth, timeout=self.timeout
            )
        )
        if resp.status_code == 404:  # v2's "Key not found", or no v2 handler at all
            return None
        try:
            doc = resp.json()
        except ValueError:
            doc = {"message": resp.text.strip()[:200]}
        if resp.status_code in (401, 403):
            raise EtcdAccessDenied(
                f"etcd refused a read of its v2 store: {doc.get('message')} (its v2 auth has "
                "users of its own: check --etcd-username/--etcd-password)"
            )
        if resp.status_code != 200 or not isinstance(doc.get("node"), dict):
            raise EtcdUnavailable(
                f"etcd's v2 store answered HTTP {resp.status_code}: {doc.get('message')}"
            )
        return doc["node"]

    def compact(self, revision: int) -> None:
        self.post("/kv/compaction", {"revision": revision, "physical": True})

    def watch(self, prefix: str, start_revision: int, *, idle_timeout: float) -> WatchStream:
        """Open a watch on every key under `prefix` from `start_revision` on the current endpoint."""
        request = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(prefix_end(prefix)),
                "start_revision": start_revision,
                "progress_notify": True,
            }
        }
        try:
            return self.call(
                lambda c: WatchStream(
                    c.session, c.get_url("/watch"), request, self.timeout, idle_timeout
                )
            )
        except Etcd3Exception as exc:
            raise EtcdUnavailable(f"watch refused: {_short(exc)}") from exc

    def close(self) -> None:
        for client in self._clients:
            client.session.close()
