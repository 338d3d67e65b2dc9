"""Every bake ships a `uv.lock` that uv accepts for its own pyproject.toml, checked offline
with an empty cache: what `uv sync --locked` (the Dockerfile, CI) checks before installing.

A lock goes stale when the template's dependencies change; the fix is one command,
`python scripts/lock.py`, which every failure here names.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import (
    CASES,
    PROJECT_TEMPLATE,
    TEMPLATE_DIR,
    Bakery,
    Case,
    bake,
    clean_env,
    load_hook,
    load_module,
    run,
)

POST = load_hook("post_gen_project")
REGENERATE = ".venv/bin/python scripts/lock.py"


def lock_script() -> ModuleType:
    return load_module(TEMPLATE_DIR / "scripts" / "lock.py", "template_lock_script")


def uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert found, "uv is missing: it belongs to requirements-dev.txt"
    return found


def case_params() -> list[Any]:
    return [pytest.param(case, id=case.id) for case in CASES]


@pytest.mark.parametrize("case", case_params())
def test_bake_lock_matches_its_pyproject(bakery: Bakery, tmp_path: Path, case: Case) -> None:
    root = bakery.get(case).path
    assert (root / "uv.lock").is_file(), "the bake has no uv.lock"
    assert not (root / POST.LOCKS_DIR).exists(), "the template's other locks were left in"
    # An empty cache and no network: the lock alone must satisfy the project.
    env = clean_env(UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON_DOWNLOADS="never")
    checked = run([uv(), "lock", "--check", "--offline"], cwd=root, env=env)
    assert checked.ok, (
        f"the uv.lock of a {case.id} bake does not match its pyproject.toml: "
        f"run `{REGENERATE}` at the template root and commit the locks\n{checked.report()}"
    )


def test_template_holds_one_lock_per_dependency_set() -> None:
    script = lock_script()
    wanted = {POST.lock_name(answers) for answers in script.answer_sets(POST)}
    held = {path.name for path in (PROJECT_TEMPLATE / POST.LOCKS_DIR).glob("*.lock")}
    assert held == wanted, f"locks missing or left over: run `{REGENERATE}`"


def test_lock_is_templated_on_name_and_version_only() -> None:
    """The template's locks name the project through its two variables and hold no other
    template logic (see the post-generation hook's LOCKS_DIR)."""
    variables = ("{{ cookiecutter.project_slug }}", "{{ cookiecutter.version }}")
    for path in (PROJECT_TEMPLATE / POST.LOCKS_DIR).glob("*.lock"):
        text = path.read_text(encoding="utf-8")
        assert all(variable in text for variable in variables), path.name
        for variable in variables:
            text = text.replace(variable, "")
        assert not re.search(r"\{\{|\{%|\{#", text), f"{path.name} holds template logic"


def test_stale_lock_is_reported_with_the_command(tmp_path: Path) -> None:
    """The check itself can fail: a dependency added to a bake makes uv refuse its lock."""
    project = bake(tmp_path, job_backend="inprocess")
    pyproject = project / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    added = text.replace('    "pydantic>=2.11",\n', '    "pydantic>=2.11",\n    "rich",\n')
    assert added != text
    pyproject.write_text(added)
    env = clean_env(UV_CACHE_DIR=str(tmp_path / "uv-cache"), UV_PYTHON_DOWNLOADS="never")
    checked = run([uv(), "lock", "--check", "--offline"], cwd=project, env=env)
    assert not checked.ok, checked.report()
