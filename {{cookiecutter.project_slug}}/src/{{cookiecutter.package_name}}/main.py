"""The ASGI entry point, for `uvicorn <package>.main:app`.

Settings are read here, at import; tests build their own app with `create_app`.
"""

from .factory import create_app

app = create_app()
