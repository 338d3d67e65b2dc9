"""Shape the generated project to the answers: the one place that says which files
and dependencies belong to which option, applied after cookiecutter has rendered
every file.

The template keeps every optional file; `FEATURES` lists them with the answers that
keep them, and everything an unchosen feature owns is removed here. Dependency files
stay plain TOML (no template logic, so Dependabot-style tools can update them): a
feature's dependency lines are deleted by name instead. No network, no third-party
imports.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Feature:
    """Files and dependencies that exist only while `option` is one of `values`."""

    option: str
    values: tuple[Any, ...]
    paths: tuple[str, ...] = ()
    dependencies: tuple[str, ...] = ()

    def is_chosen(self, answers: Mapping[str, Any]) -> bool:
        return answers.get(self.option) in self.values


# Paths are relative to the project root; {package_name} is filled in from the answers.
FEATURES: tuple[Feature, ...] = (
    Feature(
        option="job_backend",
        values=("celery",),
        paths=(
            "src/{package_name}/worker.py",
            "src/{package_name}/jobs/celery_app.py",
            "src/{package_name}/jobs/celery_backend.py",
            "tests/celery_processes.py",
            "tests/test_celery_worker.py",
        ),
        dependencies=("celery", "redis", "celery-types"),
    ),
    Feature(
        option="use_bearer_auth",
        values=(True,),
        paths=(
            "src/{package_name}/middleware/bearer_auth.py",
            "tests/test_bearer_auth.py",
        ),
    ),
    Feature(option="ci_provider", values=("github",), paths=(".github",)),
    # GitLab has no Dependabot: Renovate updates pyproject.toml and uv.lock together.
    Feature(option="ci_provider", values=("gitlab",), paths=(".gitlab-ci.yml", "renovate.json")),
    Feature(
        option="license",
        values=("MIT", "BSD-3-Clause"),
        paths=("LICENSE",),
    ),
)


# The template holds one uv lock per set of answers to the options whose features own
# dependencies (`python scripts/lock.py` at the template root writes them all); a project
# keeps the one for its answers as `uv.lock`. Names and versions only: the project's own
# name and version are the template's two variables in them.
LOCKS_DIR = ".uv-locks"
LOCK_FILE = "uv.lock"


def dependency_options() -> tuple[str, ...]:
    """The options whose answers change the dependency set, in a stable order."""
    return tuple(sorted({feature.option for feature in FEATURES if feature.dependencies}))


def lock_name(answers: Mapping[str, Any]) -> str:
    """The template's lock file for these answers, e.g. `job_backend-celery.lock`."""
    parts = [f"{option}-{str(answers.get(option)).lower()}" for option in dependency_options()]
    return "+".join(parts) + ".lock"


def unchosen(answers: Mapping[str, Any]) -> list[Feature]:
    return [feature for feature in FEATURES if not feature.is_chosen(answers)]


def paths_to_remove(answers: Mapping[str, Any]) -> list[str]:
    package_name = str(answers["package_name"])
    return [
        path.format(package_name=package_name)
        for feature in unchosen(answers)
        for path in feature.paths
    ]


def dependencies_to_remove(answers: Mapping[str, Any]) -> list[str]:
    return [dep for feature in unchosen(answers) for dep in feature.dependencies]


def without_dependencies(pyproject_text: str, names: Iterable[str]) -> str:
    """Delete the lines of a dependency list that name one of `names`.

    A dependency line looks like `    "celery[redis]==5.7.0",`; the name ends at the
    first character that cannot be part of it.
    """
    lowered = {name.lower() for name in names}
    kept = []
    for line in pyproject_text.splitlines(keepends=True):
        match = re.match(r'\s*"([A-Za-z0-9][A-Za-z0-9._-]*)', line)
        if match and match.group(1).lower() in lowered:
            continue
        kept.append(line)
    return "".join(kept)


def remove_paths(root: Path, relative_paths: Iterable[str]) -> None:
    for relative in relative_paths:
        target = root / relative
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        else:
            raise FileNotFoundError(f"the feature manifest names a missing path: {relative}")


def keep_lock(root: Path, answers: Mapping[str, Any]) -> None:
    """Move the lock of these answers to `uv.lock` and drop the others."""
    locks = root / LOCKS_DIR
    chosen = locks / lock_name(answers)
    if not chosen.is_file():
        raise FileNotFoundError(
            f"the template has no uv lock {LOCKS_DIR}/{chosen.name} for these answers: "
            "run `python scripts/lock.py` in the template"
        )
    chosen.replace(root / LOCK_FILE)
    shutil.rmtree(locks)


def local_env_file(answers: Mapping[str, Any]) -> str | None:
    """The `.env` with fresh secrets, or None when the service needs none."""
    lines = []
    if answers.get("use_bearer_auth") is True:
        lines.append(f"API_TOKEN={secrets.token_urlsafe(32)}")
    if answers.get("job_backend") == "celery":
        lines.append(f"FLOWER_PASSWORD={secrets.token_urlsafe(24)}")
    if not lines:
        return None
    header = "# Local secrets, generated with the project. Never commit this file."
    return "\n".join([header, *lines]) + "\n"


def template_commit(repo_dir: str | None) -> str | None:
    """The commit of the template checkout, when it is a git repository (local only)."""
    if not repo_dir:
        return None
    try:
        done = subprocess.run(
            ["git", "-C", repo_dir, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def update_record(answers: Mapping[str, Any], commit: str | None) -> dict[str, Any]:
    """`.cruft.json`: where the project came from and with which answers, so that
    `cruft update` can re-render both template versions and apply the difference."""
    context = {
        key: value
        for key, value in answers.items()
        if not key.startswith("_") or key in ("_template", "_template_version")
    }
    return {
        "template": answers.get("_template"),
        "commit": commit,
        "checkout": answers.get("_checkout"),
        "context": {"cookiecutter": context},
        "directory": None,
        # Secrets are made anew on every render; never diff them.
        "skip": [".env"],
    }


def apply(root: Path, answers: Mapping[str, Any]) -> None:
    remove_paths(root, paths_to_remove(answers))
    keep_lock(root, answers)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        without_dependencies(pyproject.read_text(), dependencies_to_remove(answers))
    )
    record = update_record(answers, template_commit(answers.get("_repo_dir")))
    (root / ".cruft.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    env_text = local_env_file(answers)
    if env_text is not None:
        env_file = root / ".env"
        env_file.write_text(env_text)
        env_file.chmod(0o600)


def main(answers: Mapping[str, Any]) -> int:
    apply(Path.cwd(), answers)
    return 0


if __name__ == "__main__":
    # cookiecutter runs this in the generated project; see pre_gen_project.py for why
    # the answers travel as JSON in a raw string.
    sys.exit(main(json.loads(r'''{{ cookiecutter | tojson }}''')))  # fmt: skip
