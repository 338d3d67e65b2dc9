"""Several hosts, one broker: a generated Celery bake spread over network namespaces.

Four namespaces stand for four machines on one switch (tests/netns.py): the broker (with
the result store), the API, and two worker hosts, each running the bake's own commands
(`redis-server`, `rabbitmq-server`, `uvicorn <package>.main:app`,
`celery -A <package>.worker worker`) from the shared bake env. The test process talks
to the API from inside the API's namespace, as a load balancer next to it would; no
traffic leaves the namespaces the test made.

The broker is a parameter (`BROKERS`), each with its own bake:
- redis (`job_backend=celery`): one redis-server is broker and result store
  (`REDIS_URL`).
- rabbitmq (`job_backend=celery-rabbitmq`): a private RabbitMQ node carries the jobs
  (`BROKER_URL` amqp://) and redis-server, on the same host, keeps results and job
  states (`REDIS_URL`). The node's files, Erlang cookie and epmd are the test's own;
  the machine's RabbitMQ is in another namespace and never touched.

What it shows, in order, on one cluster:
1. Jobs submitted to the API are run by both worker hosts (the worker logs say which).
2. The host running a job is cut off mid-job: its cable unplugged at the switch and its
   processes frozen, as a machine that hangs or loses power. The job completes once, on
   the other host; the API answers every request meanwhile (new jobs included). The time
   from the cut to completion is measured and printed. With Redis it is the visibility
   timeout (1.5 x JOB_TIME_LIMIT_SECONDS, counted from the job's delivery) plus up to
   one restore sweep plus the job's own duration. With RabbitMQ there is no visibility
   timeout: the job comes back once RabbitMQ has missed the silent worker's heartbeats
   (the bake's 10 s; about two of them) and closed its connection, plus the job.
3. The cut host returns (plugged in, thawed): it does not run the job again, and the
   job's state stays the other host's result; the host takes new jobs.
4. The API host is cut from the broker host: submissions get 503 within 2 s, readiness
   says what failed (Redis; with RabbitMQ the broker and Redis, both on that host), and
   everything recovers by itself once the cable is back.

It runs as root where `ip netns` works, and skips saying why elsewhere, unless
REQUIRE_NETNS=1 (set by .ci/run) makes that a failure; the RabbitMQ entry needs
rabbitmq-server as well. Every namespace, link and process is removed at the end, on
failure and on SIGTERM too, and a process still running in a namespace after its host
was stopped (RabbitMQ's epmd, say) fails the test.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netns
import pytest
import rabbitmq_node
from conftest import ProjectEnv, bake, clean_env

# With Redis, a short hard limit makes the visibility timeout short: ceil(5 x 1.5) = 8 s,
# and a restore sweep every second (see celery_config in the bake's jobs/celery_app.py).
REDIS_JOB_TIME_LIMIT_SECONDS = 5
VISIBILITY_TIMEOUT_SECONDS = 8
# RabbitMQ's redelivery does not depend on the limit: a limit longer than the cut, so
# that when the cut host returns, what stops its stale copy of the job is the worker's
# lost connection, not a limit passed while it was frozen.
RABBITMQ_JOB_TIME_LIMIT_SECONDS = 120
# The job the cut interrupts: long enough to be cut in the middle, under the soft
# limits (4 s with Redis).
LONG_JOB_SECONDS = 2.5
SHORT_JOB_SECONDS = 0.6
API_PORT = 8000
START_TIMEOUT = 60.0
# The heartbeat the RabbitMQ bake asks for (broker_heartbeat in jobs/celery_app.py);
# RabbitMQ closes a connection after about two missed ones.
BROKER_HEARTBEAT_SECONDS = 10
# What a client of a cut-off API may wait for its 503 (the contract's figure).
UNAVAILABLE_WITHIN = 2.0


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    seconds: float


class _InHostConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket is made inside a host's namespace."""

    def __init__(self, host: netns.Host, port: int, timeout: float) -> None:
        super().__init__("127.0.0.1", port, timeout=timeout)
        self.netns_host = host

    def connect(self) -> None:
        self.sock = self.netns_host.connect(self.host, self.port, self.timeout or 10.0)


@dataclass
class Service:
    """A host's process of the bake, with its JSON log."""

    host: netns.Host
    log_path: Path

    def records(self) -> list[dict[str, Any]]:
        # The process may be mid-line: the text after the last newline is not a record yet.
        lines = self.log_path.read_text(errors="replace").split("\n")[:-1]
        return [json.loads(line) for line in lines if line.startswith("{")]

    def messages(self) -> list[str]:
        return [str(record.get("message", "")) for record in self.records()]

    def job_lines(self, job_id: str, word: str) -> list[str]:
        """This process's `job <id> ... <word>` lines (`started`, `succeeded`)."""
        return [m for m in self.messages() if m.startswith(f"job {job_id} ") and word in m]


@dataclass
class Cluster:
    broker: Broker
    network: netns.Network
    api_host: netns.Host
    api: Service
    workers: dict[str, Service]
    test: pytest.Item
    measured: list[str] = field(default_factory=list)

    def measure(self, line: str) -> None:
        """Keep a measurement for the run's summary (tests/conftest.py), even if a later
        step fails."""
        self.measured.append(line)
        self.test.user_properties.append(("measured", line))

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Answer:
        connection = _InHostConnection(self.api_host, API_PORT, timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        started = time.monotonic()
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        seconds = time.monotonic() - started
        return Answer(response.status, json.loads(raw) if raw else None, seconds)

    def submit(self, simulate_seconds: float) -> str:
        answer = self.call("POST", "/reports", {"rows": 50, "simulate_seconds": simulate_seconds})
        assert answer.status == 202, answer
        return str(answer.body["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        answer = self.call("GET", f"/jobs/{job_id}")
        assert answer.status == 200, answer
        return dict(answer.body)

    def wait_finished(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["status"] not in {"succeeded", "failed", "cancelled"}:
            assert time.monotonic() < deadline, f"job {job_id} never finished: {job}"
            time.sleep(0.1)
            job = self.job(job_id)
        return job

    def starts(self, job_id: str) -> int:
        """How many times any worker host started `job_id`."""
        return sum(len(w.job_lines(job_id, "started")) for w in self.workers.values())

    def runners(self, job_id: str) -> list[str]:
        """The worker hosts whose logs say they started `job_id`."""
        return sorted(role for role, w in self.workers.items() if w.job_lines(job_id, "started"))


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- brokers


@dataclass(frozen=True)
class Broker:
    """How one broker runs on the broker host, and the settings that point at it."""

    name: str
    job_backend: str  # the cookiecutter answer
    start: Callable[[netns.Host, Path], None]
    service_env: Callable[[netns.Host], dict[str, str]]
    job_time_limit: int  # JOB_TIME_LIMIT_SECONDS of the API and the workers
    # What brings a lost host's job back, for the printed measurement.
    redelivery: str
    # Cut to completion at most: the redelivery, the job, and slack for a busy machine
    # (two cores shared with the rest of the suite).
    recovery_ceiling: float
    # The readiness checks that must fail while the API host is cut off from this host.
    readiness_checks: tuple[str, ...]


def _start_redis(host: netns.Host, workdir: Path) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        _skip_or_fail("no redis-server binary to run the broker host's Redis")
    assert binary is not None
    host.popen(
        [binary, "--bind", host.address, "--port", "6379", "--save", "", "--appendonly", "no",
         "--protected-mode", "no", "--dir", workdir],
        log_path=workdir / "redis.log", env={"PATH": os.defpath}, cwd=workdir,
    )  # fmt: skip
    wait_until(lambda: _answers(host, host.address, 6379), 15, "redis-server to listen")


def _answers(host: netns.Host, address: str, port: int) -> bool:
    try:
        host.connect(address, port, timeout=0.5).close()
    except OSError:
        return False
    return True


RABBITMQ_NODE = "rabbit@localhost"


def _start_rabbitmq(host: netns.Host, workdir: Path) -> None:
    """Redis for results and job state, and a private RabbitMQ node for the jobs.

    The node is the host's own: its files, its Erlang cookie ($HOME) and its epmd are in
    `workdir` and the namespace, so the machine's RabbitMQ (127.0.0.1:5672 outside) is
    neither seen nor touched. AMQP listens on the switch; Erlang distribution and epmd
    on the host's loopback only."""
    _start_redis(host, workdir)
    server, ctl = rabbitmq_node.script("rabbitmq-server"), rabbitmq_node.script("rabbitmqctl")
    if server is None or ctl is None:
        _skip_or_fail("no rabbitmq-server (and rabbitmqctl) to run the broker host's RabbitMQ")
    assert server is not None
    assert ctl is not None
    base = workdir / "rabbitmq"
    files = rabbitmq_node.own_files(
        base,
        [
            # guest may log in from the other hosts (by default only over loopback).
            "loopback_users = none",
            f"listeners.tcp.default = {host.address}:5672",
        ],
    )
    pid_file = files["RABBITMQ_PID_FILE"]
    env = {
        "PATH": os.defpath,
        **files,
        "RABBITMQ_NODENAME": RABBITMQ_NODE,
        "RABBITMQ_NODE_PORT": "5672",
        "RABBITMQ_LOGS": "-",  # to the server's output: rabbitmq.log in the workdir
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    process = host.popen([server], log_path=workdir / "rabbitmq.log", env=env, cwd=base)

    def stop() -> None:
        # Its own way down first, then its process group (the host's stop), and epmd,
        # which daemonized out of that group.
        with suppress(subprocess.TimeoutExpired):
            host.run([ctl, "-n", RABBITMQ_NODE, "stop"], env=env, timeout=30)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        for pid in host.pids():
            with suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "epmd":
                    os.kill(pid, signal.SIGKILL)

    host.before_stop.append(stop)
    # `wait` follows the pid file, then the node's boot (`await_startup` gives up at once
    # while the node is not registered with epmd yet).
    waited = host.run(
        [ctl, "-n", RABBITMQ_NODE, "wait", pid_file, "--timeout", str(int(START_TIMEOUT))],
        env=env, timeout=START_TIMEOUT + 10,
    )  # fmt: skip
    assert waited.returncode == 0, (
        f"RabbitMQ did not start: {waited.stdout}{waited.stderr}\n"
        + (workdir / "rabbitmq.log").read_text(errors="replace")[-3000:]
    )
    assert _answers(host, host.address, 5672), "RabbitMQ started but does not listen on 5672"


BROKERS = {
    "redis": Broker(
        "redis",
        "celery",
        _start_redis,
        lambda host: {"REDIS_URL": f"redis://{host.address}:6379/0"},
        job_time_limit=REDIS_JOB_TIME_LIMIT_SECONDS,
        redelivery=f"visibility timeout {VISIBILITY_TIMEOUT_SECONDS} s",
        # The visibility timeout, a restore sweep (every second), the job, slack.
        recovery_ceiling=VISIBILITY_TIMEOUT_SECONDS + 1 + LONG_JOB_SECONDS + 20,
        readiness_checks=("redis",),
    ),
    "rabbitmq": Broker(
        "rabbitmq",
        "celery-rabbitmq",
        _start_rabbitmq,
        lambda host: {
            "BROKER_URL": f"amqp://guest:guest@{host.address}:5672//",
            "REDIS_URL": f"redis://{host.address}:6379/0",
        },
        job_time_limit=RABBITMQ_JOB_TIME_LIMIT_SECONDS,
        redelivery=f"RabbitMQ missed the worker's heartbeats ({BROKER_HEARTBEAT_SECONDS} s)",
        # No visibility timeout: the job comes back when RabbitMQ closes the silent
        # connection, after about two missed heartbeats (20-30 s); then the job, slack.
        recovery_ceiling=90,
        readiness_checks=("broker", "redis"),
    ),
}


# --------------------------------------------------------------------------- fixtures


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("REQUIRE_NETNS") == "1":
        pytest.fail(f"REQUIRE_NETNS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def cluster(
    request: pytest.FixtureRequest,
    project_env: ProjectEnv,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    reason = netns.unavailable_reason()
    if reason is not None:
        _skip_or_fail(reason)
    broker = BROKERS[str(request.param)]
    netns.remove_stale()
    work = tmp_path_factory.mktemp(f"scale-out-{broker.name}")
    project = bake(work, job_backend=broker.job_backend)
    package = project.name.replace("-", "_")
    # SIGTERM (an interrupted CI run) tears the fixture down like Ctrl-C does.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    network = netns.Network()
    try:
        broker_host = network.add_host("broker")
        api_host = network.add_host("api")
        worker_hosts = [network.add_host("worker-a"), network.add_host("worker-b")]
        assert network.leaks() == []
        broker.start(broker_host, _workdir(work, broker_host))
        env = clean_env(
            project_env.venv,
            PYTHONPATH=str(project / "src"),
            PYTHONDONTWRITEBYTECODE="1",
            JOBS_BACKEND="celery",
            JOB_TIME_LIMIT_SECONDS=str(broker.job_time_limit),
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
            **broker.service_env(broker_host),
        )
        workers = {}
        for host in worker_hosts:
            workdir = _workdir(work, host)
            log = workdir / "worker.log"
            host.popen(
                [project_env.python, "-m", "celery", "-A", f"{package}.worker", "worker",
                 "--pool", "prefork", "--concurrency", "1", "--hostname", f"{host.role}@%h",
                 "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
                log_path=log, env={**env, "TMPDIR": str(workdir)}, cwd=workdir,
            )  # fmt: skip
            workers[host.role] = Service(host, log)
        workdir = _workdir(work, api_host)
        api_host.popen(
            [project_env.python, "-m", "uvicorn", f"{package}.main:app",
             "--host", "0.0.0.0", "--port", str(API_PORT)],
            log_path=workdir / "api.log", env=env, cwd=workdir,
        )  # fmt: skip
        api = Service(api_host, workdir / "api.log")
        for worker in workers.values():
            _wait_started(worker, lambda w=worker: any("ready." in m for m in w.messages()))
        made = Cluster(broker, network, api_host, api, workers, request.node)

        def ready() -> bool:
            try:
                return made.call("GET", "/health/ready", timeout=5).status == 200
            except OSError:
                return False

        _wait_started(api, ready)
        yield made
    finally:
        left = network.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    assert not left, f"left behind: {left}"
    assert not any(name.startswith(network.prefix) for name in os.listdir(netns.NETNS_DIR)), (
        "a namespace of this run survived"
    )


def _wait_started(service: Service, started: Callable[[], bool]) -> None:
    """Wait for a service to be up; fail with its log if it is not, or if it exits."""

    def up() -> bool:
        if any(p.poll() is not None for p in service.host.processes):
            raise AssertionError(f"{service.host.role} exited:\n{_tail(service)}")
        return started()

    try:
        wait_until(up, START_TIMEOUT, f"{service.host.role} to start")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{_tail(service)}") from None


def _tail(service: Service) -> str:
    return service.log_path.read_text(errors="replace")[-3000:]


def _workdir(root: Path, host: netns.Host) -> Path:
    path = root / host.role
    path.mkdir(exist_ok=True)
    return path


# --------------------------------------------------------------------------- the lane


# Estimates per broker: RabbitMQ takes about 10 s to start and 20-30 s to give a lost
# worker's job back.
LANE_SECONDS = {"redis": 70, "rabbitmq": 100}


@pytest.mark.parametrize(
    "cluster",
    [pytest.param(name, marks=pytest.mark.heavy(seconds=LANE_SECONDS[name])) for name in BROKERS],
    indirect=True,
)
def test_workers_on_two_hosts_survive_the_loss_of_one(cluster: Cluster) -> None:
    _jobs_spread_over_both_hosts(cluster)
    cut, job_id = _worker_host_cut_mid_job(cluster)
    _cut_host_returns_without_running_it_again(cluster, cut, job_id)
    _api_host_cut_from_the_broker(cluster)
    for line in cluster.measured:
        print(f"scale-out [{cluster.broker.name}]: {line}", file=sys.stderr)


def _jobs_spread_over_both_hosts(cluster: Cluster) -> None:
    job_ids = [cluster.submit(SHORT_JOB_SECONDS) for _ in range(6)]
    for job_id in job_ids:
        assert cluster.wait_finished(job_id)["status"] == "succeeded"
    ran_by = {job_id: cluster.runners(job_id) for job_id in job_ids}
    assert all(cluster.starts(job_id) == 1 for job_id in job_ids), ran_by  # each ran once
    used = {hosts[0] for hosts in ran_by.values()}
    assert used == set(cluster.workers), f"jobs did not spread over both hosts: {ran_by}"


def _worker_host_cut_mid_job(cluster: Cluster) -> tuple[str, str]:
    job_id = cluster.submit(LONG_JOB_SECONDS)
    runner = wait_until(lambda: cluster.runners(job_id), 15, f"a worker to start {job_id}")[0]
    wait_until(lambda: cluster.job(job_id)["progress"] > 0, 10, f"{job_id} to make progress")
    (other,) = set(cluster.workers) - {runner}
    cut_host = cluster.workers[runner].host
    cut_host.cut()
    cut_host.freeze()
    cut_at = time.monotonic()

    # The API answers throughout: every poll, and a new job, which the other host runs.
    during = cluster.submit(SHORT_JOB_SECONDS)
    slowest = 0.0
    deadline = cut_at + cluster.broker.recovery_ceiling
    job = cluster.job(job_id)
    while job["status"] != "succeeded":
        assert job["status"] in {"queued", "running"}, job
        assert time.monotonic() < deadline, f"{job_id} not redelivered: {job}"
        time.sleep(0.1)
        answer = cluster.call("GET", f"/jobs/{job_id}")
        assert answer.status == 200, answer
        slowest = max(slowest, answer.seconds)
        job = answer.body
    recovered = time.monotonic() - cut_at
    assert job["result"]["rows"] == 50, job
    assert cluster.wait_finished(during)["status"] == "succeeded"
    assert cluster.runners(during) == [other]

    # Once, on the other host: the cut one started it and never finished it.
    assert cluster.workers[other].job_lines(job_id, "started"), "not redelivered to the other host"
    assert len(cluster.workers[other].job_lines(job_id, "succeeded")) == 1
    assert not cluster.workers[runner].job_lines(job_id, "succeeded")
    cluster.measure(
        f"worker host cut mid-job: done on the other host {recovered:.1f} s after the cut "
        f"({cluster.broker.redelivery}, job {LONG_JOB_SECONDS} s); "
        f"slowest API answer meanwhile {slowest * 1000:.0f} ms"
    )
    return runner, job_id


def _cut_host_returns_without_running_it_again(cluster: Cluster, role: str, job_id: str) -> None:
    returned = cluster.workers[role]
    before = cluster.job(job_id)
    lines_before = len(returned.messages())
    returned.host.plug()
    returned.host.thaw()
    # Its pool process resumes where it froze. With Redis the soft limit, passed while
    # frozen, stops it; with RabbitMQ the worker's lost connection must (the limit is
    # far off). Its late outcome must not overwrite the result. Wait out the rest of
    # the job and the limit's check.
    time.sleep(LONG_JOB_SECONDS + 2)
    after = cluster.job(job_id)
    assert after == before, f"the returned host changed the job's state: {before} -> {after}"
    late = returned.messages()[lines_before:]
    assert not returned.job_lines(job_id, "succeeded"), late
    assert [m for m in late if m.startswith(f"job {job_id} ") and "started" in m] == [], late

    # Back in service: it takes new jobs again (once its connections are back).
    def took_one() -> bool:
        job_ids = [cluster.submit(SHORT_JOB_SECONDS) for _ in range(4)]
        for new in job_ids:
            assert cluster.wait_finished(new)["status"] == "succeeded"
        return any(cluster.runners(new) == [role] for new in job_ids)

    wait_until(took_one, 30, f"the returned host {role} to take a job")
    assert cluster.job(job_id) == before
    assert cluster.starts(job_id) == 2  # the cut run and the one that finished, no third


def _api_host_cut_from_the_broker(cluster: Cluster) -> None:
    cluster.api_host.cut()
    cut_at = time.monotonic()
    waits = []
    for _ in range(3):
        answer = cluster.call("POST", "/reports", {"rows": 5, "simulate_seconds": 0})
        assert answer.status == 503, answer
        assert answer.seconds < UNAVAILABLE_WITHIN, answer
        waits.append(answer.seconds)
    ready = cluster.call("GET", "/health/ready")
    assert ready.status == 503, ready
    for check in cluster.broker.readiness_checks:
        assert "unreachable" in ready.body["checks"][check], ready
    failing = [name for name, outcome in ready.body["checks"].items() if outcome != "ok"]
    assert cluster.call("GET", "/health/live").status == 200
    cut_for = time.monotonic() - cut_at

    cluster.api_host.plug()
    plugged_at = time.monotonic()

    def submitted() -> str | None:
        answer = cluster.call("POST", "/reports", {"rows": 5, "simulate_seconds": 0})
        assert answer.status in {202, 503}, answer
        return str(answer.body["id"]) if answer.status == 202 else None

    job_id = wait_until(submitted, 30, "submissions to recover after the link returned")
    recovered = time.monotonic() - plugged_at
    assert cluster.wait_finished(job_id)["status"] == "succeeded"
    wait_until(lambda: cluster.call("GET", "/health/ready").status == 200, 30, "readiness")
    cluster.measure(
        f"API host cut from the broker for {cut_for:.1f} s: 503 after "
        f"{', '.join(f'{s:.2f}' for s in waits)} s, readiness 503 ({', '.join(failing)} not ok); "
        f"first 202 {recovered:.2f} s after the link returned"
    )


# --------------------------------------------------------------------------- where it cannot run


def test_without_root_the_lane_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert netns.unavailable_reason() == (
        "network namespaces need root (`ip netns add`); not running as root"
    )


def test_without_ip_the_lane_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns, "ip_binary", lambda: None)
    assert netns.unavailable_reason() == "no `ip` binary (iproute2) to make network namespaces"


def test_require_netns_turns_the_skip_into_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUIRE_NETNS", "1")
    with pytest.raises(pytest.fail.Exception, match=r"^REQUIRE_NETNS=1 but no root$"):
        _skip_or_fail("no root")
    monkeypatch.delenv("REQUIRE_NETNS")
    with pytest.raises(pytest.skip.Exception, match=r"^no root$"):
        _skip_or_fail("no root")


def test_a_process_that_outlives_its_host_is_reported_and_killed(tmp_path: Path) -> None:
    """What RabbitMQ's epmd would do without its kill: leave its process group."""
    reason = netns.unavailable_reason()
    if reason is not None:
        _skip_or_fail(reason)
    network = netns.Network()
    try:
        host = network.add_host("daemon")
        pid_file = tmp_path / "daemon.pid"
        host.popen(
            ["setsid", "sh", "-c", f"sleep 300 & echo $! > {pid_file}"],
            log_path=tmp_path / "daemon.log", env={"PATH": os.defpath}, cwd=tmp_path,
        )  # fmt: skip
        wait_until(lambda: pid_file.read_text().strip() if pid_file.exists() else "", 10, "sh")
        daemon = int(pid_file.read_text())
        assert daemon in host.pids()
    finally:
        left = network.close()
    assert left == [f"{network.prefix}-daemon: process {daemon} sleep 300"]
    # Killed: gone, or a zombie waiting for whoever adopted it to reap it.
    stat = Path(f"/proc/{daemon}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")
