"""Regenerate the uv locks the template ships: `python scripts/lock.py` (from the template
root, with requirements-dev.txt installed; it needs the package index).

The generated project's dependencies depend on the answers (an in-process project has no
Celery), so the template holds one lock per answer set that changes them, under
`{{cookiecutter.project_slug}}/.uv-locks/`; the post-generation hook keeps the right one
as `uv.lock`. For each such answer set this bakes a project, runs `uv lock` in it (the
versions already locked stay, unless `--upgrade`) and writes the lock back with the
project's name and version turned into the template's variables again.

Run it after any change to the template's pyproject.toml; `tests/test_locks.py` fails
until then. `--check` says which locks would change, writing nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
PROJECT_TEMPLATE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
# A slug that no dependency can share, so that its lines in the lock are the project's.
PLACEHOLDER_SLUG = "template-lock-placeholder"
SLUG_VARIABLE = "{{ cookiecutter.project_slug }}"
VERSION_VARIABLE = "{{ cookiecutter.version }}"
JINJA_RE = re.compile(r"\{\{|\{%|\{#")


def post_gen_hook() -> ModuleType:
    path = TEMPLATE_DIR / "hooks" / "post_gen_project.py"
    spec = importlib.util.spec_from_file_location("post_gen_project", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def answer_sets(hook: ModuleType) -> Iterator[dict[str, Any]]:
    """Every combination of answers to the options that change the dependency set."""
    options = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text(encoding="utf-8"))
    names = hook.dependency_options()
    choices = [
        options[name] if isinstance(options[name], list) else [True, False] for name in names
    ]
    for values in itertools.product(*choices):
        yield dict(zip(names, values, strict=True))


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        raise SystemExit("uv is missing: pip install -r requirements-dev.txt")
    return found


def templated(lock_text: str) -> str:
    """The lock with the placeholder project's name and version as template variables."""
    if JINJA_RE.search(lock_text):
        raise SystemExit("the lock holds Jinja syntax: it cannot be a template file")
    text, count = re.subn(
        rf'^name = "{PLACEHOLDER_SLUG}"\nversion = "[^"]*"$',
        f'name = "{SLUG_VARIABLE}"\nversion = "{VERSION_VARIABLE}"',
        lock_text,
        flags=re.MULTILINE,
    )
    if count != 1:
        raise SystemExit(f"expected one [[package]] entry for the project, found {count}")
    text = text.replace(f'"{PLACEHOLDER_SLUG}"', f'"{SLUG_VARIABLE}"')
    if PLACEHOLDER_SLUG in text:
        raise SystemExit(f"{PLACEHOLDER_SLUG} is left in the lock in an unexpected form")
    return text


def relock(hook: ModuleType, answers: Mapping[str, Any], work: Path, *, upgrade: bool) -> str:
    """The template's lock text for `answers`, after `uv lock` in a fresh bake."""
    target = PROJECT_TEMPLATE / hook.LOCKS_DIR / hook.lock_name(answers)
    placeholder = not target.exists()
    if placeholder:  # a new answer set: the hook needs a file to move
        target.parent.mkdir(exist_ok=True)
        target.write_text("")
    try:
        project = Path(
            cookiecutter(
                str(TEMPLATE_DIR),
                no_input=True,
                output_dir=str(work),
                extra_context={**answers, "project_slug": PLACEHOLDER_SLUG},
            )
        )
    finally:
        if placeholder:
            target.unlink()
    lock = project / hook.LOCK_FILE
    if placeholder:
        lock.unlink()
    command = [uv(), "lock", *(["--upgrade"] if upgrade else [])]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"uv lock failed for {answers}:\n{done.stdout}{done.stderr}")
    return templated(lock.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--upgrade", action="store_true", help="move every dependency to its newest version"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a lock would change"
    )
    args = parser.parse_args(argv)

    hook = post_gen_hook()
    locks_dir = PROJECT_TEMPLATE / hook.LOCKS_DIR
    wanted: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="template-lock-") as work:
        for number, answers in enumerate(answer_sets(hook)):
            out = Path(work) / str(number)
            out.mkdir()
            wanted[hook.lock_name(answers)] = relock(hook, answers, out, upgrade=args.upgrade)

    changed = []
    for name, text in sorted(wanted.items()):
        path = locks_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            changed.append(name)
            if not args.check:
                locks_dir.mkdir(exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for stale in sorted(set(p.name for p in locks_dir.glob("*.lock")) - set(wanted)):
        changed.append(f"{stale} (no longer needed)")
        if not args.check:
            (locks_dir / stale).unlink()

    where = locks_dir.relative_to(TEMPLATE_DIR)
    if not changed:
        print(f"{len(wanted)} locks in {where} are up to date")
        return 0
    verb = "would change" if args.check else "written"
    print(f"{verb} in {where}: " + ", ".join(changed))
    return 1 if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
