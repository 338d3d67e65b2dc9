"""The ASGI entry point, for `uvicorn <package>.main:app`.

Settings are read here, at import; tests build their own app with `create_app`. A bad
setting stops the process with one line naming it, not a traceback.
"""

from .factory import create_app
from .settings import SettingsError

try:
    app = create_app()
except SettingsError as error:
    raise SystemExit(f"{__package__}: {error}") from None
