"""A private Redis Cluster (three primaries, three replicas) and a Sentinel-managed primary for tests.

Every node is a ``redis-server`` on a free loopback port in a temporary directory, without
persistence (``--save ''``, ``--appendonly no``); the cluster is made by ``redis-cli --cluster
create ... --cluster-replicas 1``. :func:`tools_missing` says why these cannot run here (the
tests skip then, or fail under ``CI=1``).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.redis_server import RedisServer, ServerExited


def tools_missing() -> str | None:
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


BUS_OFFSET = 10000  # a cluster node also listens on port + 10000, its cluster bus


def _ephemeral_start() -> int:
    """The first port the kernel hands to outgoing connections (Linux: 32768 unless changed)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus port (port + 10000) is free too, both below the kernel's
    ephemeral range where it leaves room: an outgoing connection of another test can then never
    take a node's bus port between this check and the node's bind (a CI run lost a node so, its
    bus port 33366 being one a client had just been given), nor while a killed node is down."""
    high = _ephemeral_start() - BUS_OFFSET - 1
    if high < 20000 + 100 * count:
        high = 29999
    ports: list[int] = []
    while len(ports) < count:
        port = random.randint(20000, high)
        if port not in ports and _port_free(port) and _port_free(port + BUS_OFFSET):
            ports.append(port)
    return ports


def cli(port: int, *args: str, timeout: float = 30) -> str:
    done = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], capture_output=True,
                          text=True, timeout=timeout)
    return done.stdout + done.stderr


class ClusterNode(RedisServer):
    def start(self) -> ClusterNode:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.directory / "nodes.conf"), "--cluster-node-timeout", "1000",
                "--protected-mode", "yes"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_pong(self.port, self.process)
        return self


def _wait_pong(port: int, process: subprocess.Popen | None = None, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerExited(f"redis-server exited ({process.returncode}) on port {port}: a port was taken")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not start on port {port}")


class RedisClusterServers:
    """Six nodes, three primaries with a replica each; ``url`` is what MOVINET_REDIS_URL takes."""

    def __init__(self, directory: Path, buckets: int | None = None) -> None:
        self.directory = directory
        self.nodes = [ClusterNode(directory / f"node{i}", port) for i, port in enumerate(cluster_ports(6))]
        self.buckets = buckets

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])
        return f"redis+cluster://{hosts}" + (f"?buckets={self.buckets}" if self.buckets else "")

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            for attempt in range(3):
                try:
                    node.start()
                    break
                except ServerExited:
                    if attempt == 2:
                        raise
                    shutil.rmtree(node.directory)  # its nodes.conf names the old port
                    taken = {n.port for n in self.nodes}
                    node.port = next(p for p in cluster_ports(len(taken) + 1) if p not in taken)
        out = subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                              "--cluster-replicas", "1", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
        self.wait_ok()
        return self

    def alive(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says ``cluster_state:ok`` and every replica has synced."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = self.alive()
            if all("cluster_state:ok" in cli(n.port, "cluster", "info") for n in nodes) and all(
                    "master_link_status:down" not in cli(n.port, "info", "replication") for n in nodes):
                return
            time.sleep(0.2)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    def primaries(self) -> dict[int, list[tuple[int, int]]]:
        """port -> the slot ranges it serves (from CLUSTER SLOTS as redis-cli prints it)."""
        lines = cli(self.alive()[0].port, "cluster", "nodes").splitlines()
        found: dict[int, list[tuple[int, int]]] = {}
        for line in lines:
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2]:
                port = int(parts[1].split(":")[1].split("@")[0])
                ranges = [tuple(int(x) for x in p.split("-")) if "-" in p else (int(p), int(p))
                          for p in parts[8:] if not p.startswith("[")]
                found[port] = ranges
        return found

    def node_id(self, port: int) -> str:
        return cli(port, "cluster", "myid").strip()

    def owner_of(self, slot: int) -> int:
        for port, ranges in self.primaries().items():
            if any(lo <= slot <= hi for lo, hi in ranges):
                return port
        raise AssertionError(f"no primary serves slot {slot}")

    def migrate_keys(self, slot: int, source: int, target: int, batch: int = 3) -> int:
        """Start moving one slot as ``redis-cli --cluster reshard`` does (a few keys per MIGRATE)
        and move every key; returns how many. Meanwhile a script over a session's keys, some moved
        and some not, gets TRYAGAIN; afterwards, until :meth:`hand_over`, commands get ASK."""
        cli(target, "cluster", "setslot", str(slot), "importing", self.node_id(source))
        cli(source, "cluster", "setslot", str(slot), "migrating", self.node_id(target))
        moved = 0
        while names := cli(source, "cluster", "getkeysinslot", str(slot), str(batch)).split():
            out = cli(source, "migrate", "127.0.0.1", str(target), "", "0", "5000", "keys", *names)
            assert "OK" in out or "NOKEY" in out, out
            moved += len(names)
        return moved

    def hand_over(self, slot: int, target: int) -> None:
        """End a migration: every primary learns that ``target`` serves ``slot`` (then MOVED)."""
        target_id = self.node_id(target)
        for port in self.primaries():
            cli(port, "cluster", "setslot", str(slot), "node", target_id)

    def move_slot(self, slot: int, source: int, target: int, batch: int = 3, ask_s: float = 1.0) -> int:
        """Migrate one slot, holding it ``ask_s`` in the ASK phase; returns how many keys moved."""
        moved = self.migrate_keys(slot, source, target, batch)
        time.sleep(ask_s)
        self.hand_over(slot, target)
        return moved

    def flush(self) -> None:
        for port in self.primaries():
            cli(port, "flushall")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class SentinelServers:
    """A primary, its replica and ``sentinels`` Sentinels monitoring it as ``movinet`` (``quorum`` of
    them must agree that it is down); ``url`` lists every Sentinel."""

    def __init__(self, directory: Path, sentinels: int = 1, quorum: int = 1) -> None:
        self.directory = directory
        self.primary = RedisServer(directory / "primary")
        self.replica = RedisServer(directory / "replica")
        self.sentinel_ports = cluster_ports(sentinels)
        self.quorum = quorum
        self.sentinels: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports) + "/movinet"

    def start(self) -> SentinelServers:
        self.primary.start()
        self.replica.start()
        cli(self.replica.port, "replicaof", "127.0.0.1", str(self.primary.port))
        for i, port in enumerate(self.sentinel_ports):
            conf = self.directory / f"sentinel{i}.conf"  # each its own: a Sentinel rewrites its file
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                            f"sentinel monitor movinet 127.0.0.1 {self.primary.port} {self.quorum}\n"
                            "sentinel down-after-milliseconds movinet 1000\nsentinel failover-timeout movinet 5000\n")
            self.sentinels.append(subprocess.Popen([shutil.which("redis-server"), str(conf), "--sentinel"],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            _wait_pong(port, self.sentinels[-1])
        deadline = time.monotonic() + 30
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync or the Sentinels did not find each other")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        """The replica synced and every Sentinel knows the others (they find each other through the
        primary's hello channel, every 2 s): only then can they agree on a failover."""
        if "master_link_status:up" not in cli(self.replica.port, "info", "replication"):
            return False
        others = len(self.sentinel_ports) - 1
        return all(cli(port, "sentinel", "sentinels", "movinet").count("runid") >= others
                   for port in self.sentinel_ports)

    def kill_sentinel(self, index: int) -> None:
        self.sentinels[index].kill()
        self.sentinels[index].wait(10)

    def flush(self) -> None:
        cli(self.primary.port, "flushall")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            if sentinel.poll() is None:
                sentinel.kill()
                sentinel.wait(10)
        self.primary.kill()
        self.replica.kill()
