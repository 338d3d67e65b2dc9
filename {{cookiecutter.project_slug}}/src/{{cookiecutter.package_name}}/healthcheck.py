"""The image's HEALTHCHECK (`python -m <package>.healthcheck`): exit 0 when healthy.
{%- if cookiecutter.job_backend != "inprocess" %}

The API, the Celery worker and Celery beat run from the same image (compose.yaml gives
the worker and beat their own commands), so one check must suit all three: a container
running a Celery worker is healthy when that worker answers a ping addressed to it; one
running beat when Redis answers and a beat holds the schedule's lock (this one, or the
one it waits for); any other container when the API answers `/health/live`. It looks at
the container's processes rather than at a setting, so that
`docker run <image> celery -A ... worker` is checked right without any.
{%- else %}

Healthy when the API answers `/health/live` on the port the image's command serves.
{%- endif %}
"""

{% if cookiecutter.job_backend != "inprocess" -%}
import socket
{% endif -%}
import sys
import urllib.request
{%- if cookiecutter.job_backend != "inprocess" %}
from collections.abc import Iterable
from pathlib import Path
{%- endif %}

# The port of the image's command (Dockerfile CMD).
LIVE_URL = "http://127.0.0.1:8000/health/live"
{%- if cookiecutter.job_backend != "inprocess" %}


def container_commands() -> list[list[str]]:
    """The command line of every process visible in this container."""
    commands = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            raw = cmdline.read_bytes()
        except OSError:  # the process ended while we looked
            continue
        commands.append([part.decode(errors="replace") for part in raw.split(b"\0") if part])
    return commands


def runs_celery_worker(commands: Iterable[list[str]]) -> bool:
    # `celery` is argv[0], or argv[1] after the interpreter of its script.
    return any(
        "worker" in command and any(Path(arg).name == "celery" for arg in command[:2])
        for command in commands
    )


def runs_celery_beat(commands: Iterable[list[str]]) -> bool:
    return any(
        "beat" in command and any(Path(arg).name == "celery" for arg in command[:2])
        for command in commands
    )


def beat_holds_its_lock() -> bool:
    import redis

    from .jobs.celery_beat import beat_lock_held
    from .settings import load_settings

    try:
        return beat_lock_held(load_settings().redis_url)
    except redis.RedisError:
        return False


def worker_answers() -> bool:
    from .worker import app  # only a worker's container needs the Celery app

    # The worker's default node name is celery@<hostname>; `podman exec` sets no HOSTNAME.
    replies = app.control.ping(destination=[f"celery@{socket.gethostname()}"], timeout=5.0)
    return bool(replies)
{%- endif %}


def api_answers(url: str = LIVE_URL) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - our own http URL
            return bool(response.status == 200)
    except OSError:
        return False


def main() -> int:
{%- if cookiecutter.job_backend != "inprocess" %}
    if runs_celery_worker(container_commands()):
        return 0 if worker_answers() else 1
    if runs_celery_beat(container_commands()):
        return 0 if beat_holds_its_lock() else 1
{%- endif %}
    return 0 if api_answers() else 1


if __name__ == "__main__":
    sys.exit(main())
