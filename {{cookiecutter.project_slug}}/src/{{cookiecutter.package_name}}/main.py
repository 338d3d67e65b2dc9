"""The ASGI entry point: `uvicorn {{ cookiecutter.package_name }}.main:app`.

Settings are read here, at import; tests build their own app with `create_app`.
"""

from {{ cookiecutter.package_name }}.factory import create_app

app = create_app()
