"""The container image's HEALTHCHECK (`python -m <package>.healthcheck`)."""

from {{ cookiecutter.package_name }} import healthcheck
from {{ cookiecutter.package_name }}.factory import create_app
from tests.support import live_server, make_settings


def test_api_check_passes_while_the_api_serves_and_fails_after() -> None:
    with live_server(create_app(make_settings(jobs_backend="inprocess"))) as url:
        assert healthcheck.api_answers(f"{url}/health/live")
    assert not healthcheck.api_answers(f"{url}/health/live")
{%- if cookiecutter.job_backend != "inprocess" %}


def test_worker_is_recognised_from_its_command_line() -> None:
    worker = ["/opt/venv/bin/python", "/opt/venv/bin/celery", "-A", "app.worker", "worker"]
    assert healthcheck.runs_celery_worker([["uvicorn", "app.main:app"], worker])
    assert healthcheck.runs_celery_worker([["celery", "-A", "app.worker", "worker"]])
    # The API, the check itself and other Celery commands are not a worker.
    api = ["/opt/venv/bin/python", "/opt/venv/bin/uvicorn", "app.main:app"]
    check = ["python", "-m", "app.healthcheck"]
    inspect = ["celery", "-A", "app.worker", "inspect", "ping"]
    assert not healthcheck.runs_celery_worker([api, check, inspect])


def test_beat_is_recognised_from_its_command_line() -> None:
    beat = ["/opt/venv/bin/python", "/opt/venv/bin/celery", "-A", "app.beat", "beat"]
    assert healthcheck.runs_celery_beat([["uvicorn", "app.main:app"], beat])
    worker = ["celery", "-A", "app.worker", "worker"]
    assert not healthcheck.runs_celery_beat([worker, ["python", "-m", "app.healthcheck"]])
{%- endif %}
