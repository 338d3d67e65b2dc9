"""The service with a one-second schedule of its own, for the tests that serve it from
another process (`uvicorn tests.scheduled_app:app --workers 2`)."""

from {{ cookiecutter.package_name }}.factory import create_app
from tests.scheduled_runs import EVERY_SECOND

app = create_app()
app.state.schedule = (EVERY_SECOND,)
