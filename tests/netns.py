"""Hosts made of Linux network namespaces, for the scale-out lane (tests/test_scale_out.py).

A `Network` is one namespace holding a bridge (the switch) and one namespace per host,
each joined to the bridge by a veth pair whose switch end is the host's "cable". Every
address lives inside these namespaces: the root namespace gets no interface, no address
and no route, so the lane's traffic never leaves them, and two runs (or an xdist worker
each) can use the same private subnet without meeting. Cutting a host is taking its
cable down at the switch: its packets are dropped silently, as with a dead machine (no
RST, no ICMP), which is the harder case for the peers' timeouts.

Processes run in a host with `ip netns exec`, each in a process group of its own, so a
host can be frozen (SIGSTOP to every group, as a machine that hangs) and thawed. The
test process itself talks to a host through sockets opened inside the host's namespace
(`Host.socket`, via setns(2) on this thread only for the moment of creation).

Everything is removed by `Network.close()`: each host's `before_stop` hooks (a server's
own shutdown, a daemon that left its process group), its processes by their process
group, then whatever still runs in a namespace (reported, then killed: `ip netns pids`),
then the namespaces (deleting a namespace deletes the veth ends in it). Namespaces are named
`scaleout-<pid>-<role>`; those of a run that was SIGKILLed (its pid gone) are removed by
the next run (`remove_stale`), since a finalizer cannot run after SIGKILL.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIR = Path("/run/netns")
PREFIX = "scaleout"
CLONE_NEWNET = 0x40000000
BRIDGE = "br0"
# Where `ip` lives on Debian; PATH of a non-login root shell may lack /usr/sbin.
IP_CANDIDATES = ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip")


def ip_binary() -> str | None:
    found = shutil.which("ip")
    if found:
        return found
    return next((path for path in IP_CANDIDATES if os.access(path, os.X_OK)), None)


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can (checked by making one)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (`ip netns add`); not running as root"
    ip = ip_binary()
    if ip is None:
        return "no `ip` binary (iproute2) to make network namespaces"
    probe = f"{PREFIX}-{os.getpid()}-probe"
    made = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed here: {made.stderr.strip()}"
    subprocess.run([ip, "netns", "delete", probe], capture_output=True)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the namespaces of earlier runs whose process is gone; return their names."""
    ip = ip_binary()
    if ip is None or not NETNS_DIR.is_dir():
        return []
    removed = []
    for entry in NETNS_DIR.iterdir():
        parts = entry.name.split("-")
        ours = len(parts) >= 3 and parts[0] == PREFIX and parts[1].isdigit()
        if ours and not _pid_alive(int(parts[1])):
            _kill_processes_in(entry.name)
            subprocess.run([ip, "netns", "delete", entry.name], capture_output=True)
            removed.append(entry.name)
    return removed


def _kill_processes_in(namespace: str) -> None:
    """SIGKILL whatever still runs in `namespace` (a leftover of a killed run)."""
    ip = ip_binary()
    assert ip is not None
    listed = subprocess.run([ip, "netns", "pids", namespace], capture_output=True, text=True)
    for pid in listed.stdout.split():
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGCONT)
            os.kill(int(pid), signal.SIGKILL)


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def pick_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route of the root namespace covers, so no address of
    the lane could be mistaken for one of the machine's own networks."""
    ip = ip_binary()
    assert ip is not None
    routes = subprocess.run([ip, "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout  # fmt: skip
    taken = []
    for line in routes.splitlines():
        word = line.split()[0] if line.split() else ""
        if word[:1].isdigit():
            with suppress(ValueError):
                taken.append(ipaddress.ip_network(word, strict=False))
    for _ in range(100):
        candidate = ipaddress.ip_network(
            f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24"
        )
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 for the lane")


@dataclass
class Host:
    """One network namespace standing for a machine, with one address on the switch."""

    network: Network
    role: str
    namespace: str
    cable: str  # the veth end in the switch namespace
    address: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Run first by `stop`: a server's own way down, and processes that left the groups
    # (RabbitMQ's epmd daemonizes into a session of its own).
    before_stop: list[Callable[[], None]] = field(default_factory=list)

    def popen(
        self,
        args: Sequence[str | Path],
        *,
        log_path: Path,
        env: Mapping[str, str],
        cwd: Path,
    ) -> subprocess.Popen[bytes]:
        """Start `args` inside this host, in a process group of its own, output to a file."""
        command = [self.network.ip, "netns", "exec", self.namespace, *map(str, args)]
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(
        self, args: Sequence[str | Path], *, env: Mapping[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run `args` inside this host to completion, output captured."""
        command = [self.network.ip, "netns", "exec", self.namespace, *map(str, args)]
        return subprocess.run(command, env=dict(env), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)  # fmt: skip

    def pids(self) -> list[int]:
        """Every process running in this host's namespace, ours or not."""
        listed = self.network.ip_ok("netns", "pids", self.namespace)
        return [int(pid) for pid in listed.split()]

    def socket(self) -> socket.socket:
        """A TCP socket created inside this host's namespace (it stays there)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(NETNS_DIR / self.namespace, os.O_RDONLY)
        try:
            _setns(target)
            try:
                return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            finally:
                _setns(own)
        finally:
            os.close(target)
            os.close(own)

    def connect(self, address: str, port: int, timeout: float) -> socket.socket:
        sock = self.socket()
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def cut(self) -> None:
        """Unplug the host at the switch: its packets are dropped, nobody is told."""
        self.network.ip_ok("-n", self.network.switch, "link", "set", self.cable, "down")

    def plug(self) -> None:
        self.network.ip_ok("-n", self.network.switch, "link", "set", self.cable, "up")

    def _signal_all(self, signum: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signum)

    def freeze(self) -> None:
        """Stop every process of the host (and their children): a hung machine."""
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def stop(self, grace: float = 10.0) -> None:
        """The `before_stop` hooks, then SIGTERM each process group (thawed first), then
        SIGKILL what is left."""
        self.thaw()
        for hook in self.before_stop:
            with suppress(Exception):
                hook()
        self.before_stop.clear()
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in self.processes:
            # The group too: a pool child may outlive its parent for a moment.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        self.processes.clear()


class Network:
    """A switch namespace with a bridge, and host namespaces plugged into it."""

    def __init__(self) -> None:
        ip = ip_binary()
        assert ip is not None
        self.ip = ip
        self.prefix = f"{PREFIX}-{os.getpid()}"
        self.subnet = pick_subnet()
        self._addresses = self.subnet.hosts()
        self.hosts: dict[str, Host] = {}
        self.namespaces: list[str] = []
        self.switch = self._namespace("switch")
        self.ip_ok("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
        self.ip_ok("-n", self.switch, "link", "set", BRIDGE, "up")

    def ip_ok(self, *args: str) -> str:
        ran = subprocess.run([self.ip, *args], capture_output=True, text=True, timeout=30)
        if ran.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {ran.stderr.strip()}")
        return ran.stdout

    def _namespace(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        self.ip_ok("netns", "add", name)
        self.namespaces.append(name)
        self.ip_ok("-n", name, "link", "set", "lo", "up")
        return name

    def add_host(self, role: str) -> Host:
        namespace = self._namespace(role)
        cable = f"p{len(self.hosts)}"
        address = str(next(self._addresses))
        # Both ends are made in their namespaces directly: no name ever in the root one.
        self.ip_ok("-n", self.switch, "link", "add", cable, "type", "veth",
                   "peer", "name", "eth0", "netns", namespace)  # fmt: skip
        self.ip_ok("-n", self.switch, "link", "set", cable, "master", BRIDGE)
        self.ip_ok("-n", self.switch, "link", "set", cable, "up")
        self.ip_ok("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}",
                   "dev", "eth0")  # fmt: skip
        self.ip_ok("-n", namespace, "link", "set", "eth0", "up")
        host = Host(self, role, namespace, cable, address)
        self.hosts[role] = host
        return host

    def leaks(self) -> list[str]:
        """Ways traffic could leave the lane's namespaces: an address of its subnet in the
        root namespace, or a route in a host to anywhere but the subnet."""
        found = []
        root = self.ip_ok("-4", "-o", "addr", "show")
        found += [f"root namespace: {line}" for line in root.splitlines() if self._ours(line)]
        for host in self.hosts.values():
            for route in self.ip_ok("-n", host.namespace, "-4", "route", "show").splitlines():
                if route.split()[0] != str(self.subnet):
                    found.append(f"{host.role}: route {route}")
        return found

    def _ours(self, line: str) -> bool:
        for word in line.split():
            with suppress(ValueError):
                if ipaddress.ip_interface(word).ip in self.subnet:
                    return True
        return False

    def close(self) -> list[str]:
        """Stop every process, delete every namespace; return what outlived its stop
        (then killed) and what could not be removed."""
        # Clients before servers (the broker host was added first): nothing logs a
        # lost broker on the way out.
        for host in reversed(self.hosts.values()):
            with suppress(Exception):
                host.stop()
        left = []
        for name in reversed(self.namespaces):
            left += [f"{name}: process {survivor}" for survivor in _survivors(name)]
            _kill_processes_in(name)
            ran = subprocess.run([self.ip, "netns", "delete", name], capture_output=True)
            if ran.returncode != 0 or (NETNS_DIR / name).exists():
                left.append(name)
        self.namespaces.clear()
        return left


def _survivors(namespace: str, grace: float = 5.0) -> list[str]:
    """What still runs in `namespace` after its host was stopped, as `pid command`; a
    process SIGKILLed a moment ago gets `grace` seconds to be gone."""
    ip = ip_binary()
    assert ip is not None
    deadline = time.monotonic() + grace
    while True:
        listed = subprocess.run([ip, "netns", "pids", namespace], capture_output=True,
                                text=True).stdout.split()  # fmt: skip
        if not listed or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    found = []
    for pid in listed:
        with suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            found.append(f"{pid} {command.decode(errors='replace').strip()}")
    return found
