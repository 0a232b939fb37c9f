"""The daemons' HTTP endpoint: Prometheus metrics, plus read-only JSON pages.

`GET /metrics` (and `/`) serve prometheus_client's registry; `GET /<page>`
serves what that page's function returns, as JSON (the controller's
`/status`). Nothing is ever changed through it. Both daemons listen on
127.0.0.1 unless told otherwise: metrics and status name nodes and
addresses, so exposing them is the operator's choice.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from wsgiref.simple_server import make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

Page = Callable[[], object]


def wsgi_app(pages: Mapping[str, Page] | None = None) -> Callable:
    """A WSGI app serving metrics and the JSON `pages` (path -> function)."""
    metrics = make_wsgi_app()
    pages = dict(pages or {})

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        # eventlet's handler puts a closure over itself into its own environ: a reference
        # cycle per request, which the controller's raised GC thresholds leave for long
        environ.pop("eventlet.set_idle", None)
        page = pages.get(environ.get("PATH_INFO", ""))
        if page is None:
            return metrics(environ, start_response)
        try:
            # compact, not indented: json's indenting encoder is the pure-Python one,
            # whose nested closures make a reference cycle per page served
            body = json.dumps(page(), default=str).encode() + b"\n"
            status = "200 OK"
        except Exception as exc:  # a page must answer, never take the daemon down
            body = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n"
            status = "500 Internal Server Error"
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body)))])  # fmt: skip
        return [body]

    return app


def serve_in_thread(app: Callable, host: str, port: int) -> ThreadingWSGIServer:
    """Serve `app` from a daemon thread (for daemons without a green-thread hub)."""
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
