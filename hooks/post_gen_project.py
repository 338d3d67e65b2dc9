"""Shape the generated project to the answers: the one place that says which files
and dependencies belong to which option, applied after cookiecutter has rendered
every file.

The template keeps every optional file; `FEATURES` lists them with the answers that
keep them, and everything an unchosen feature owns is removed here. Dependency files
stay plain TOML (no template logic, so Dependabot-style tools can update them): a
feature's dependency lines are deleted by name instead.

It also writes `.cruft.json` (where the template is, at which commit, with which answers,
so cruft can follow it) and the `.env` of fresh secrets, owner-only from its creation.
Problems that do not stop generation (a template with uncommitted changes, or not in git)
are one `NOTE:` line each on stderr. No network (git runs locally), no third-party
imports.
"""

from __future__ import annotations

import json
import os
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
        values=("celery", "celery-rabbitmq"),
        paths=(
            "src/{package_name}/worker.py",
            "src/{package_name}/beat.py",
            "src/{package_name}/jobs/celery_beat.py",
            "src/{package_name}/jobs/broker.py",
            "src/{package_name}/jobs/celery_app.py",
            "src/{package_name}/jobs/celery_backend.py",
            "src/{package_name}/jobs/redis_watch.py",
            "tests/celery_processes.py",
            "tests/test_celery_worker.py",
            "tests/scheduled_beat.py",
            "tests/test_celery_beat.py",
        ),
        # The Celery instrumentation belongs to both this and use_opentelemetry: it
        # stays only when both are chosen.
        dependencies=(
            "celery",
            "redis",
            "celery-redbeat",
            "celery-types",
            "opentelemetry-instrumentation-celery",
        ),
    ),
    # Redis as the broker: kombu's transport and the messages in its lists.
    Feature(option="job_backend", values=("celery",), paths=("tests/test_broker_messages.py",)),
    # RabbitMQ as the broker: the tests' vhosts on a real server.
    Feature(option="job_backend", values=("celery-rabbitmq",), paths=("tests/rabbitmq.py",)),
    Feature(
        option="auth",
        values=("token",),
        paths=(
            "src/{package_name}/middleware/bearer_auth.py",
            "tests/test_bearer_auth.py",
        ),
    ),
    Feature(
        option="auth",
        values=("token", "jwt"),
        paths=("src/{package_name}/api/security.py",),
    ),
    Feature(
        option="auth",
        values=("jwt",),
        paths=(
            "src/{package_name}/middleware/jwt_auth.py",
            "src/{package_name}/middleware/jwks.py",
            "tests/jwks_server.py",
            "tests/test_jwt_auth.py",
        ),
        dependencies=("pyjwt",),
    ),
    Feature(
        option="use_opentelemetry",
        values=(True,),
        paths=(
            "src/{package_name}/observability/tracing.py",
            "src/{package_name}/middleware/tracing.py",
            "tests/otlp_receiver.py",
            "tests/test_tracing.py",
        ),
        dependencies=(
            "opentelemetry-sdk",
            "opentelemetry-exporter-otlp-proto-http",
            "opentelemetry-instrumentation-asgi",
            "opentelemetry-instrumentation-celery",
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


# Answers with the same dependencies as another answer, and so the same lock: RabbitMQ's
# client (py-amqp) comes with Celery's own kombu, which every Celery bake has.
SAME_LOCK_AS = {("job_backend", "celery-rabbitmq"): "celery"}


def lock_name(answers: Mapping[str, Any]) -> str:
    """The template's lock file for these answers, e.g. `job_backend-celery.lock`."""
    parts = []
    for option in dependency_options():
        answer = str(answers.get(option)).lower()
        parts.append(f"{option}-{SAME_LOCK_AS.get((option, answer), answer)}")
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
    if answers.get("auth") == "token":
        lines.append(f"API_TOKEN={secrets.token_urlsafe(32)}")
    if answers.get("job_backend") != "inprocess":
        lines.append(f"FLOWER_PASSWORD={secrets.token_urlsafe(24)}")
    if not lines:
        return None
    header = "# Local secrets, generated with the project. Never commit this file."
    return "\n".join([header, *lines]) + "\n"


# cookiecutter's built-in abbreviations (cookiecutter.config.BUILTIN_ABBREVIATIONS), copied
# because the hooks import only the standard library, and cookiecutter's expander needs the
# user's config, which a hook never sees. cruft clones the recorded location with plain
# git, which knows none of them.
ABBREVIATIONS = {
    "gh": "https://github.com/{0}.git",
    "gl": "https://gitlab.com/{0}.git",
    "bb": "https://bitbucket.org/{0}",
}
# `https://...`, `git+ssh://...`, `git@host:owner/name`, `gh:owner/name` (or a user's own
# abbreviation, kept as typed: only cookiecutter's config knows what it stands for).
REMOTE_TEMPLATE_RE = re.compile(r"^([a-z][a-z0-9+.-]*://|[\w.-]+@[\w.-]+:|\w+:)", re.IGNORECASE)
COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def is_remote(template: str) -> bool:
    return bool(REMOTE_TEMPLATE_RE.match(template)) and not Path(template).exists()


def remote_location(template: str) -> str:
    """The URL git can clone: abbreviations expanded, cookiecutter's `git+` prefix dropped."""
    prefix, _, rest = template.partition(":")
    if prefix in ABBREVIATIONS and not rest.startswith("//"):
        return ABBREVIATIONS[prefix].format(rest)
    return template.removeprefix("git+")


def git(directory: Path, *args: str) -> str | None:
    """Output of a local git command (never the network), or None when it fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def is_template_dir(candidate: Path, answers: Mapping[str, Any]) -> bool:
    """Whether `candidate` holds this template (its cookiecutter.json and hooks)."""
    try:
        options = json.loads((candidate / "cookiecutter.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        (candidate / "hooks" / "post_gen_project.py").is_file()
        and isinstance(options, dict)
        and options.get("_template_version") == answers.get("_template_version")
    )


def parent_cwd() -> Path | None:
    """The working directory of the process that runs this hook (Linux only).

    cookiecutter runs hooks from inside the template (`work_in(repo_dir)`) with the new
    project as their working directory: its own working directory is the template's
    absolute location, whatever was typed on the command line."""
    try:
        return Path(os.readlink(f"/proc/{os.getppid()}/cwd"))
    except OSError:
        return None


def rendered_template_dir(
    answers: Mapping[str, Any], cookiecutter_cwd: Path | None, shell_pwd: str | None
) -> Path | None:
    """The absolute folder cookiecutter rendered from. `_repo_dir` keeps what was typed
    (`.` for `cookiecutter .`), relative to a working directory the hook cannot see:
    try cookiecutter's own working directory, then the shell's `$PWD`, and take the first
    that holds this template."""
    repo_dir = str(answers.get("_repo_dir") or "")
    candidates = []
    if repo_dir and os.path.isabs(repo_dir):
        candidates.append(Path(repo_dir))
    else:
        if cookiecutter_cwd is not None:
            candidates.append(cookiecutter_cwd)
        if shell_pwd and os.path.isabs(shell_pwd):
            candidates.append(Path(shell_pwd, repo_dir))
    for candidate in candidates:
        if is_template_dir(candidate, answers):
            return candidate.resolve()
    return None


@dataclass(frozen=True)
class TemplateSource:
    """What `.cruft.json` needs to find the template again: a location git can clone,
    the commit, the template's folder inside that repository, and notes for the user."""

    location: str
    commit: str | None
    directory: str | None
    notes: tuple[str, ...] = ()


def uncommitted_template_changes(template_dir: Path) -> bool:
    """Whether the files that shape a project (cookiecutter.json, hooks/, the project
    folder) differ from the checkout's HEAD, untracked files included."""
    shaping = [
        entry.name
        for entry in template_dir.iterdir()
        if entry.name in ("cookiecutter.json", "hooks")
        or (entry.is_dir() and "cookiecutter." in entry.name and "{" in entry.name)
    ]
    status = git(template_dir, "status", "--porcelain", "--", *shaping)
    return bool(status)


def template_source(answers: Mapping[str, Any], template_dir: Path | None) -> TemplateSource:
    typed = str(answers.get("_template") or "")
    if "_commit" in answers:
        # cruft sets `_commit` when it renders the template again (diff, update): it
        # already passes the location and commit it recorded.
        return TemplateSource(typed, answers.get("_commit"), None)
    remote = is_remote(typed)
    if template_dir is None:
        where = remote_location(typed) if remote else typed
        note = (
            f"NOTE: could not find the template folder from {typed!r}; .cruft.json records "
            "no commit, so cruft cannot follow the template. Generate again with an absolute "
            "template path."
        )
        return TemplateSource(where, None, None, (note,))
    toplevel = git(template_dir, "rev-parse", "--show-toplevel")
    commit = git(template_dir, "rev-parse", "HEAD")
    if toplevel is None or commit is None or not COMMIT_RE.fullmatch(commit):
        note = (
            f"NOTE: the template at {template_dir} is not a git checkout with a commit: "
            ".cruft.json records no commit, so `cruft check`, `cruft diff` and "
            "`cruft update` cannot follow it. Generate from a git clone of the template."
        )
        where = remote_location(typed) if remote else str(template_dir)
        return TemplateSource(where, None, None, (note,))
    inner = os.path.relpath(template_dir, Path(toplevel).resolve())
    notes: tuple[str, ...] = ()
    if uncommitted_template_changes(template_dir):
        notes = (
            f"NOTE: the template at {template_dir} has uncommitted changes; .cruft.json "
            f"records its last commit {commit[:12]}, which does not hold them, so "
            "`cruft diff` shows them as your own edits. Commit the template first to avoid it.",
        )
    return TemplateSource(
        location=remote_location(typed) if remote else str(Path(toplevel).resolve()),
        commit=commit,
        directory=None if inner == "." else inner,
        notes=notes,
    )


def update_record(answers: Mapping[str, Any], source: TemplateSource) -> dict[str, Any]:
    """`.cruft.json`: where the project came from and with which answers, so that
    `cruft check`, `cruft diff` and `cruft update` can render the template again.

    Keys, order and context are those cruft itself writes (`cruft create`, and after
    each `cruft update`), so the file does not churn when cruft rewrites it."""
    context = {
        key: value
        for key, value in answers.items()
        if not key.startswith("_") or key == "_template_version"
    }
    context["_template"] = source.location
    context["_commit"] = source.commit
    return {
        "template": source.location,
        "commit": source.commit,
        "checkout": answers.get("_checkout"),
        "context": {"cookiecutter": context},
        "directory": source.directory,
        # Secrets are made anew on every render; never diff them.
        "skip": [".env"],
    }


def record_text(record: Mapping[str, Any]) -> str:
    """The JSON layout of cruft's own `json_dumps`."""
    return json.dumps(record, ensure_ascii=False, indent=2, separators=(",", ": ")) + "\n"


def write_secret_file(path: Path, text: str) -> bool:
    """Create `path` readable by its owner only, from the first byte: the mode is given to
    open(2), never narrowed afterwards. An existing file (a re-generation over a project)
    is kept as it is, with its secrets; returns whether the file was written."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        # The umask may have taken bits away from 0600; it never adds any.
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
    return True


def apply(root: Path, answers: Mapping[str, Any]) -> list[str]:
    """Shape the project in `root`; returns the notes to show the user."""
    remove_paths(root, paths_to_remove(answers))
    keep_lock(root, answers)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(
        without_dependencies(pyproject.read_text(), dependencies_to_remove(answers))
    )
    template_dir = rendered_template_dir(answers, parent_cwd(), os.environ.get("PWD"))
    source = template_source(answers, template_dir)
    record = update_record(answers, source)
    (root / ".cruft.json").write_text(record_text(record), encoding="utf-8")
    notes = list(source.notes)
    env_text = local_env_file(answers)
    if env_text is not None and not write_secret_file(root / ".env", env_text):
        notes.append("NOTE: kept the existing .env and its secrets")
    return notes


def in_template_order(answers: Mapping[str, Any], order: Iterable[str]) -> dict[str, Any]:
    """The answers in cookiecutter.json's order (the JSON literal below arrives with its
    keys sorted), as cruft records them."""
    ordered = {key: answers[key] for key in order if key in answers}
    ordered.update((key, value) for key, value in answers.items() if key not in ordered)
    return ordered


def main(answers: Mapping[str, Any], order: Iterable[str] = ()) -> int:
    for note in apply(Path.cwd(), in_template_order(answers, order)):
        print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    # cookiecutter runs this in the generated project; see pre_gen_project.py for why
    # the answers travel as JSON in a raw string.
    sys.exit(
        main(
            json.loads(r'''{{ cookiecutter | tojson }}'''),
            json.loads(r'''{{ cookiecutter.keys() | list | tojson }}'''),
        )
    )  # fmt: skip
