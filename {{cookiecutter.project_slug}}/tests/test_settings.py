"""Settings: documented where users look, and validated with a clear message."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.settings import Settings
from tests.support import make_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("document", [".env.example", "README.md"])
def test_every_setting_is_documented(document: str) -> None:
    text = (PROJECT_ROOT / document).read_text()
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in text]
    assert missing == [], f"{document} does not mention {missing}"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_REQUEST_BODY_BYTES", "2048")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    settings = Settings(_env_file=None)
    assert settings.max_request_body_bytes == 2048
    assert settings.log_level == "WARNING"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("jobs_backend", "threads"),
        ("log_format", "xml"),
        ("log_level", "LOUD"),
        ("max_request_body_bytes", -1),
        {%- if cookiecutter.use_bearer_auth %}
        ("api_token", "short"),
        {%- endif %}
    ],
)
def test_bad_settings_are_refused_naming_the_setting(name: str, value: object) -> None:
    with pytest.raises(ValidationError, match=name):
        make_settings(**{name: value})
{%- if cookiecutter.use_bearer_auth %}


def test_the_api_refuses_to_start_without_a_token() -> None:
    from {{ cookiecutter.package_name }}.factory import create_app

    with pytest.raises(RuntimeError, match="API_TOKEN is not set"):
        create_app(make_settings(api_token=None))
{%- endif %}
