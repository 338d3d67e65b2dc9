"""A private podman for the container lane (tests/test_containers.py).

Every bit of podman's state (images, containers, networks, volumes, its run and event
files) lives under one temporary folder, configured through CONTAINERS_CONF,
CONTAINERS_STORAGE_CONF and CONTAINERS_REGISTRIES_CONF, never in the machine's default
stores; `close()` removes all of it, and every process it left, even after a failure.

What this machine needs (measured, see shared/facts.md): runc, since crun refuses the
hybrid cgroup layout; cgroupfs without systemd; events to a file; default ulimits within
the hard limits. No registry is reachable here, so `base_images()` builds stand-ins for
the official images from Debian's packages when a pull fails.
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from conftest import Ran, clean_env, run

# The build's package downloads go through whatever TLS setup the host has: its CA bundle
# is mounted into the build (never baked into the image).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Debian 12's python3 is 3.11, the template's default python_version.
STAND_IN_SUITE = "bookworm"
STAND_IN_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "redis-server")
PULL_TIMEOUT = 60.0
BUILD_TIMEOUT = 900.0


def unavailable_reason() -> str | None:
    """Why containers cannot run here, or None when they can."""
    if platform.system() != "Linux":
        return f"containers need Linux (this is {platform.system()})"
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman runc)"
    if os.geteuid() != 0:
        return "the container lane runs podman as root (this machine's cgroup setup)"
    if shutil.which("runc") is None:
        return "runc is not installed (crun refuses this machine's cgroup layout)"
    if compose_command() is None:
        return "podman-compose is missing: it belongs to requirements-dev.txt"
    return None


def compose_command() -> str | None:
    return shutil.which("podman-compose", path=str(Path(sys.executable).parent)) or shutil.which(
        "podman-compose"
    )


def _nat_chains() -> dict[str, list[str]]:
    """iptables' NAT chains and their rules (netavark writes its port forwarding there)."""
    if shutil.which("iptables") is None:
        return {}
    done = subprocess.run(
        ["iptables", "-t", "nat", "-S"], capture_output=True, text=True, check=False
    )
    chains: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "-N":
            chains.setdefault(parts[1], [])
        elif len(parts) >= 2 and parts[0] == "-A":
            chains.setdefault(parts[1], []).append(line)
    return chains


# Machine-wide paths rootful podman 4.3 writes whatever its configuration says: netavark's
# run folder (IP allocations, DNS), the image library's blob cache. Removed at the end if
# the lane made them (and, for the run folder, no other network is up in it).
MACHINE_PATHS = (Path("/run/containers"), Path("/var/lib/containers"))


@dataclass
class Podman:
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    # NAT chains that were there before us: netavark leaves the per-network ones empty.
    nat_chains_before: frozenset[str] = frozenset()
    made_machine_paths: tuple[Path, ...] = ()

    @classmethod
    def create(cls) -> Podman:
        root = Path(tempfile.mkdtemp(prefix="podman-lane-"))
        # A random /16 for this run's networks, so that two runs on one machine (each with
        # its own state) do not hand out the same subnet.
        second = random.randint(100, 250)
        (root / "containers.conf").write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root}/events.log"\n'
            f'tmp_dir = "{root}/tmp"\n'
            f'volume_path = "{root}/volumes"\n'
            f'static_dir = "{root}/libpod"\n'
            "[network]\n"
            f'network_config_dir = "{root}/networks"\n'
            f'default_subnet = "10.{second}.0.0/24"\n'
            f'default_subnet_pools = [{{"base" = "10.{second}.0.0/16", "size" = 24}}]\n'
        )
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/storage"\nrunroot = "{root}/run"\n'
        )
        (root / "registries.conf").write_text(
            'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n'
        )
        (root / "tmp-build").mkdir()
        env = clean_env(
            # buildah keeps RUN --mount=type=cache folders under $TMPDIR.
            TMPDIR=str(root / "tmp-build"),
            CONTAINERS_CONF=str(root / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(root / "storage.conf"),
            CONTAINERS_REGISTRIES_CONF=str(root / "registries.conf"),
        )
        absent = tuple(path for path in MACHINE_PATHS if not path.exists())
        return cls(root, env, frozenset(_nat_chains()), absent)

    def __call__(self, *args: str | Path, timeout: float = 300.0, cwd: Path | None = None) -> Ran:
        return run(["podman", *args], cwd=cwd or self.root, env=self.env, timeout=timeout)

    def ok(self, *args: str | Path, timeout: float = 300.0, cwd: Path | None = None) -> Ran:
        ran = self(*args, timeout=timeout, cwd=cwd)
        assert ran.ok, ran.report()
        return ran

    def compose(
        self,
        project: Path,
        name: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
    ) -> Ran:
        command = compose_command()
        assert command is not None
        # Builds as Docker builds them: Docker's format (with HEALTHCHECK) and the host's
        # CA bundle for the package downloads, as in `build()`.
        build_args = f"--format docker --volume {HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"
        return run(
            [command, f"--podman-build-args={build_args}", "--project-name", name, *args],
            cwd=project,
            env={**self.env, **(env or {})},
            timeout=timeout,
        )

    def build(self, context: Path, tag: str) -> Ran:
        """`--format docker`: the OCI format has no HEALTHCHECK and podman drops it."""
        return self(
            "build",
            "--format",
            "docker",
            "--pull=never",
            "--volume",
            f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro",
            "--tag",
            tag,
            ".",
            cwd=context,
            timeout=BUILD_TIMEOUT,
        )

    def close(self) -> None:
        """Remove every container, pod, network, volume and image, stop what is left of
        their processes (by pid), unmount and delete the state folder."""
        for args in (
            ("rm", "--all", "--force", "--time", "0"),
            ("pod", "rm", "--all", "--force"),
            ("network", "prune", "--force"),
            ("volume", "rm", "--all", "--force"),
            ("rmi", "--all", "--force"),
            ("system", "reset", "--force"),
        ):
            with suppress(Exception):
                self(*args, timeout=120)
        for pid in self._processes():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mountpoint in self._mounts():
            subprocess.run(["umount", "--lazy", mountpoint], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        for path in self.made_machine_paths:
            dns = path / "networks" / "aardvark-dns"
            if not (dns.is_dir() and any(dns.iterdir())):
                shutil.rmtree(path, ignore_errors=True)
        for chain, rules in _nat_chains().items():
            if (
                chain.startswith("NETAVARK-DN-")
                and chain not in self.nat_chains_before
                and not rules
            ):
                subprocess.run(
                    ["iptables", "-t", "nat", "-X", chain], check=False, capture_output=True
                )

    def _processes(self) -> list[int]:
        """Processes whose command line names our state folder (conmon, aardvark-dns...)."""
        found = []
        marker = str(self.root).encode()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if marker in cmdline.read_bytes():
                    found.append(int(cmdline.parent.name))
            except (OSError, ValueError):
                continue
        return [pid for pid in found if pid != os.getpid()]

    def _mounts(self) -> list[str]:
        points = []
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1].startswith(str(self.root)):
                points.append(fields[1])
        return sorted(points, key=len, reverse=True)  # innermost first


# --------------------------------------------------------------------------- base images


@dataclass(frozen=True)
class BaseImages:
    """Where the Dockerfile's and compose file's base images came from."""

    stand_in: bool
    seconds: float
    note: str


def _pull(podman: Podman, image: str) -> bool:
    return podman("pull", "--quiet", image, timeout=PULL_TIMEOUT).ok


def stand_in_rootfs(cache_dir: Path) -> Path:
    """A Debian minbase root file system with Python and redis-server, as a tar: made once
    with debootstrap and kept in `cache_dir` (the lane's stand-in, not under test)."""
    key = "-".join((STAND_IN_SUITE, *STAND_IN_PACKAGES))
    tarball = cache_dir / f"{STAND_IN_SUITE}-standin.tar"
    key_file = cache_dir / "standin.key"
    if tarball.is_file() and key_file.is_file() and key_file.read_text() == key:
        return tarball
    work = Path(tempfile.mkdtemp(prefix="standin-", dir=cache_dir))
    try:
        rootfs = work / "rootfs"
        made = run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(STAND_IN_PACKAGES)}",
                STAND_IN_SUITE,
                rootfs,
                "http://deb.debian.org/debian",
            ],
            cwd=work,
            timeout=900,
        )
        assert made.ok, made.report()
        # What the official images have and the Dockerfile and compose file rely on:
        # python at /usr/local/bin, redis-server without protected mode, /data.
        local_bin = rootfs / "usr" / "local" / "bin"
        for name in ("python", "python3"):
            (local_bin / name).symlink_to("/usr/bin/python3")
        wrapper = local_bin / "redis-server"
        wrapper.write_text('#!/bin/sh\nexec /usr/bin/redis-server --protected-mode no "$@"\n')
        wrapper.chmod(0o755)
        (rootfs / "data").mkdir(exist_ok=True)
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        packed = run(["tar", "-C", rootfs, "-cf", tarball, "."], cwd=work, timeout=300)
        assert packed.ok, packed.report()
        key_file.write_text(key)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def base_images(podman: Podman, names: Sequence[str], cache_dir: Path) -> BaseImages:
    """Pull the official images; where that fails (no registry here), import the Debian
    stand-in under their names: `python:X-slim` and `redis:7-alpine`."""
    started = time.monotonic()
    if all(_pull(podman, name) for name in names):
        return BaseImages(False, time.monotonic() - started, "pulled the official images")
    tarball = stand_in_rootfs(cache_dir)
    for name in names:
        changes = ["ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        if name.startswith("redis"):
            changes += ["WORKDIR=/data", 'CMD=["redis-server"]']
        else:
            changes += ['CMD=["python3"]']
        args: list[str | Path] = ["import"]
        for change in changes:
            args += ["--change", change]
        podman.ok(*args, tarball, f"docker.io/library/{name}", timeout=300)
    note = (
        "no registry reachable: Debian stand-ins imported as "
        + ", ".join(names)
        + f" (debootstrap {STAND_IN_SUITE})"
    )
    return BaseImages(True, time.monotonic() - started, note)


# Seconds per step of the lane, printed at the end of the run (conftest.py).
TIMINGS: dict[str, float] = {}
