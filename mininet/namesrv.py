"""A pod's tiny server and client for services (standard library only), used by the e2e
tests and B7: run it inside a pod's namespace with `mnexec -a PID python3 mininet/namesrv.py`.

    serve NAME PORT       TCP: send "NAME PEER_IP\\n", then echo every line until EOF;
                          UDP on the same port: answer each datagram with "NAME PEER_IP";
                          TCP over IPv6 too where the pod has it
    connect IP PORT N [RATE]
                          N TCP connections one after the other (RATE per second, 0: as
                          fast as they go); print {"answers": {first line: count},
                          "failed": k, "seconds": time taken}
    stream IP PORT SECONDS RATE
                          a new TCP connection every 1/RATE s for SECONDS, each in a thread
                          of its own (a failing one holds up none); print [[start as
                          time.time(), first line or null], ...] in start order
    udp IP PORT N SPORT   N datagrams from source port SPORT; print the same JSON
    hold IP PORT          one TCP connection: print its first line, then send each line
                          of stdin and print the line echoed back (until stdin ends)
    from SPORT IP PORT    one TCP connection from source port SPORT (reused at once);
                          print {"answers": {first line: 1}, "failed": 0} or the failure
    probe TIMEOUT         for each line of stdin (targets IP:PORT/tcp or IP:PORT/udp, an
                          IPv6 address in brackets: [IP]:PORT/tcp): a
                          new connection (or datagram exchange) to each, all at once;
                          print a JSON list: whether each answered within TIMEOUT s
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections import Counter


def _echo(conn: socket.socket, greeting: bytes) -> None:
    # a client may reset the connection at any time (a TCP health check closes at once)
    with conn, contextlib.suppress(ConnectionResetError, BrokenPipeError):
        conn.sendall(greeting)
        for line in conn.makefile("rb"):
            conn.sendall(line)


def _listener(family: socket.AddressFamily, port: int) -> socket.socket:
    tcp = socket.socket(family)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:  # IPv4 stays on its own socket: peers as plain addresses
        tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    tcp.bind(("", port))
    tcp.listen(512)
    return tcp


def _accept(tcp: socket.socket, name: str) -> None:
    while True:
        conn, peer = tcp.accept()
        greeting = f"{name} {peer[0]}\n".encode()
        threading.Thread(target=_echo, args=(conn, greeting), daemon=True).start()


def serve(name: str, port: int) -> None:
    tcp = _listener(socket.AF_INET, port)
    try:
        tcp6 = _listener(socket.AF_INET6, port)
    except OSError:  # a pod without IPv6
        pass
    else:
        threading.Thread(target=_accept, args=(tcp6, name), daemon=True).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("", port))

    def answer_udp() -> None:
        while True:
            _, peer = udp.recvfrom(2048)
            udp.sendto(f"{name} {peer[0]}".encode(), peer)

    threading.Thread(target=answer_udp, daemon=True).start()
    print("listening", flush=True)
    _accept(tcp, name)


def connect_from(sport: int, ip: str, port: int) -> dict:
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.settimeout(3)
            s.bind(("", sport))
            s.connect((ip, port))
            return {"answers": {s.makefile("rb").readline().decode().strip(): 1}, "failed": 0}
    except OSError as exc:
        return {"answers": {}, "failed": 1, "error": str(exc)}


def connect(ip: str, port: int, count: int, rate: float) -> dict:
    answers: Counter[str] = Counter()
    failed = 0
    start = time.monotonic()
    for i in range(count):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        try:
            with socket.create_connection((ip, port), timeout=3) as s:
                s.settimeout(3)
                answers[s.makefile("rb").readline().decode().strip()] += 1
        except OSError:
            failed += 1
    return {"answers": dict(answers), "failed": failed, "seconds": time.monotonic() - start}


def stream(ip: str, port: int, seconds: float, rate: float) -> list:
    results: list[list] = []
    lock = threading.Lock()

    def one() -> None:
        started, answer = time.time(), None
        try:
            with socket.create_connection((ip, port), timeout=2) as s:
                s.settimeout(2)
                answer = s.makefile("rb").readline().decode().strip() or None
        except OSError:
            pass
        with lock:
            results.append([started, answer])

    threads = []
    start = time.monotonic()
    for i in range(int(seconds * rate)):
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
        threads.append(threading.Thread(target=one))
        threads[-1].start()
    for thread in threads:
        thread.join()
    return sorted(results)


def datagrams(ip: str, port: int, count: int, sport: int) -> dict:
    answers: Counter[str] = Counter()
    failed = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", sport))
        s.settimeout(2)
        for _ in range(count):
            try:
                s.sendto(b"?", (ip, port))
                data, peer = s.recvfrom(2048)
                answers[f"{data.decode()} from {peer[0]}:{peer[1]}"] += 1
            except OSError:
                failed += 1
    return {"answers": dict(answers), "failed": failed}


def answered(target: str, timeout: float) -> bool:
    """One new TCP connection (its greeting read) or UDP exchange (sent again every
    quarter of `timeout` until answered) to IP:PORT/PROTO."""
    address, _, proto = target.partition("/")
    ip, _, port = address.rpartition(":")
    ip = ip.strip("[]")  # an IPv6 address: [IP]:PORT
    if proto == "tcp":
        try:
            with socket.create_connection((ip, int(port)), timeout=timeout) as s:
                s.settimeout(timeout)
                return bool(s.makefile("rb").readline())
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout / 4)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.sendto(b"?", (ip, int(port)))
            try:
                return bool(s.recvfrom(2048)[0])
            except OSError:
                pass
    return False


def probe(timeout: float) -> None:
    for line in sys.stdin:
        targets = line.split()
        results = [False] * len(targets)

        def one(i: int, targets: list[str] = targets, results: list[bool] = results) -> None:
            results[i] = answered(targets[i], timeout)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(targets))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(json.dumps(results), flush=True)


def hold(ip: str, port: int) -> None:
    with socket.create_connection((ip, port), timeout=5) as s:
        f = s.makefile("rwb")
        print(f.readline().decode().strip(), flush=True)
        for line in sys.stdin:
            f.write(line.encode())
            f.flush()
            print(f.readline().decode().strip(), flush=True)


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "serve":
        serve(args[0], int(args[1]))
    elif command == "connect":
        rate = float(args[3]) if len(args) > 3 else 0.0
        print(json.dumps(connect(args[0], int(args[1]), int(args[2]), rate)))
    elif command == "from":
        print(json.dumps(connect_from(int(args[0]), args[1], int(args[2]))))
    elif command == "hold":
        hold(args[0], int(args[1]))
    elif command == "stream":
        print(json.dumps(stream(args[0], int(args[1]), float(args[2]), float(args[3]))))
    elif command == "probe":
        probe(float(args[0]))
    elif command == "udp":
        print(json.dumps(datagrams(args[0], int(args[1]), int(args[2]), int(args[3]))))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
