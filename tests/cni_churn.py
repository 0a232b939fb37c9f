"""Pod churn against the agent's CNI server, from one process (tests/test_cni_fast.py).

Run inside the node's namespace (`python -m tests.cni_churn SETTINGS_JSON`), it
makes each call as the installed client does (`cni.client.exchange`: the
same request, the same socket) without a process per call, so that hundreds
of ADDs and DELs take seconds. It behaves as a runtime does: a failed ADD is
followed by DEL and tried again, a failed DEL is tried again. It prints
`progress N` after each pod's ADD (the test restarts OVSDB at chosen points)
and finally one JSON line: what it saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field

from cni import client

RETRY_PAUSE = 0.2  # seconds between a runtime's retries
ATTEMPTS = 100  # per call: OVSDB and ovs-vswitchd come back within seconds


@dataclass
class Seen:
    adds: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # "ADD 11" -> how often
    double: list[str] = field(default_factory=list)  # an address handed to a second live pod
    gave_up: list[str] = field(default_factory=list)


@dataclass
class Churn:
    socket: str
    conf: dict
    cni_path: str
    seen: Seen = field(default_factory=Seen)

    def call(self, command: str, container_id: str, netns: str) -> tuple[int, dict | None]:
        env = {b"CNI_COMMAND": command.encode(), b"CNI_CONTAINERID": container_id.encode(),
               b"CNI_NETNS": netns.encode(), b"CNI_IFNAME": b"eth0",
               b"CNI_PATH": self.cni_path.encode(), b"PATH": b"/usr/sbin:/usr/bin:/sbin:/bin"}  # fmt: skip
        opened = set(os.listdir("/proc/self/fd"))
        try:
            status, out, _ = client.exchange(self.socket, env, json.dumps(self.conf).encode(), 120)
        finally:  # the client keeps CNI_NETNS open until it exits; we make hundreds of calls
            for fd in set(os.listdir("/proc/self/fd")) - opened:
                with contextlib.suppress(OSError):  # the listing's own descriptor, closed
                    os.close(int(fd))
        answer = json.loads(out) if out.strip() else None
        if status != 0:
            key = f"{command} {answer.get('code') if answer else '?'}"
            self.seen.failures[key] = self.seen.failures.get(key, 0) + 1
        return status, answer

    def delete(self, container_id: str, netns: str) -> None:
        for _ in range(ATTEMPTS):
            if self.call("DEL", container_id, netns)[0] == 0:
                return
            time.sleep(RETRY_PAUSE)
        self.seen.gave_up.append(f"DEL {container_id}")

    def add(self, container_id: str, netns: str) -> str | None:
        """The pod's address, once an ADD succeeded (each failure undone by a DEL first)."""
        for _ in range(ATTEMPTS):
            status, answer = self.call("ADD", container_id, netns)
            if status == 0 and answer is not None:
                return answer["ips"][0]["address"].split("/")[0]
            self.delete(container_id, netns)
            time.sleep(RETRY_PAUSE)
        self.seen.gave_up.append(f"ADD {container_id}")
        return None

    def run(self, pods: int, namespaces: list[str]) -> Seen:
        """`pods` pods, at most len(namespaces) - 1 alive at once (the oldest goes first)."""
        live: deque[tuple[str, str, str | None]] = deque()  # (container id, netns, address)
        free = list(namespaces)
        for n in range(pods):
            if len(live) == len(namespaces) - 1:
                container_id, netns, _ = live.popleft()
                self.delete(container_id, netns)
                free.append(netns)
            netns, container_id = free.pop(0), f"churn{n}"
            address = self.add(container_id, netns)
            if address is not None and address in {a for _, _, a in live}:
                self.seen.double.append(f"{address}: {container_id} while still held")
            live.append((container_id, netns, address))
            self.seen.adds += 1
            print(f"progress {n}", flush=True)
        while live:
            container_id, netns, _ = live.popleft()
            self.delete(container_id, netns)
        return self.seen


def main() -> None:
    settings = json.loads(sys.argv[1])
    churn = Churn(settings["socket"], settings["conf"], settings["cni_path"])
    seen = churn.run(settings["pods"], settings["namespaces"])
    print(json.dumps(asdict(seen)), flush=True)


if __name__ == "__main__":
    main()
