"""A RabbitMQ node of a test's own: the scripts to start it, and its files.

Used by the deploy-file tests (a node on loopback, with compose's arguments) and the
scale-out lane (a node on the broker host's namespace): never the machine's node.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

# Debian's and the RPM's /usr/sbin/rabbitmq-* wrappers switch to the rabbitmq user and
# its home (the machine's node's Erlang cookie, files it owns); the scripts they call,
# here, run as the caller with the environment they are given.
SCRIPTS_DIR = Path("/usr/lib/rabbitmq/bin")


def script(name: str) -> str | None:
    """A RabbitMQ script itself (`rabbitmq-server`, `rabbitmqctl`...), or None."""
    if os.access(SCRIPTS_DIR / name, os.X_OK):
        return str(SCRIPTS_DIR / name)
    return shutil.which(name) or shutil.which(name, path="/usr/sbin")


def own_files(base: Path, config: Sequence[str] = ()) -> dict[str, str]:
    """Make a node's own files in `base` (its config lines, no plugins, none of the
    machine's /etc/rabbitmq files) and return the environment that points the server
    and its CLI tools at them; $HOME is `base`, where the Erlang cookie is made."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "rabbitmq.conf").write_text("".join(f"{line}\n" for line in config))
    (base / "enabled_plugins").write_text("[].\n")  # no management plugin: a faster start
    (base / "rabbitmq-env.conf").write_text("")
    return {
        "HOME": str(base),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "node.pid"),
    }
