"""A long-lived TCP stream between pods, for the migration e2e test and B12 (through
bench/migration.py): `server PORT OUT` or `client IP PORT STOP`.

The client sends a numbered line every 10 ms until the file STOP exists, then closes; it
exits 1 (and says why) if the connection breaks. The server writes one line per line
received: its arrival time (monotonic) and the number, then `end` on a clean close or
`broken: ...` if the connection broke.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

INTERVAL = 0.01


def server(port: int, out: Path) -> int:
    with socket.create_server(("0.0.0.0", port)) as listener, out.open("w") as log:
        conn, _ = listener.accept()
        with conn, conn.makefile("r") as lines:
            try:
                for line in lines:
                    log.write(f"{time.monotonic():.6f} {line.strip()}\n")
            except OSError as exc:
                log.write(f"broken: {exc}\n")
                return 1
        log.write("end\n")
    return 0


def client(host: str, port: int, stop: Path) -> int:
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.settimeout(None)
            number = 0
            while not stop.exists():
                conn.sendall(f"{number}\n".encode())
                number += 1
                time.sleep(INTERVAL)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # the server's close: everything sent was read
    except OSError as exc:
        print(f"broken after {number if 'number' in locals() else 0} lines: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "server":
        sys.exit(server(int(args[0]), Path(args[1])))
    sys.exit(client(args[0], int(args[1]), Path(args[2])))
