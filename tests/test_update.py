"""A generated project takes in a later template version with `cruft update`.

The post-generation hook writes `.cruft.json` (template, commit, answers). This test
plays the whole story: template v1 in a git repository, a project generated from it
and committed, a local edit by the team, template v2, `cruft update`: the template's
change lands and the team's edit survives.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env, cookiecutter_config
from cookiecutter.main import cookiecutter  # type: ignore[import-untyped]

TEMPLATE_ROOT = Path(__file__).resolve().parents[1]
# What a template checkout holds; caches and virtual environments are not part of it.
IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"
)
CRUFT = [sys.executable, "-m", "cruft"]


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--message", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def template_repo(tmp_path: Path) -> Path:
    """This template, as version 1 of a git repository of its own."""
    repo = tmp_path / "template"
    shutil.copytree(TEMPLATE_ROOT, repo, ignore=IGNORED)
    git(repo, "init", "--quiet", "--initial-branch", "main")
    commit_all(repo, "template v1")
    return repo


def test_cruft_update_applies_a_new_template_version_and_keeps_local_edits(
    template_repo: Path, tmp_path: Path
) -> None:
    first_commit = git(template_repo, "rev-parse", "HEAD")
    project = Path(
        cookiecutter(
            str(template_repo),
            no_input=True,
            output_dir=str(tmp_path / "out"),
            extra_context={"job_backend": "inprocess"},
            config_file=str(cookiecutter_config()),
        )
    )
    record = json.loads((project / ".cruft.json").read_text())
    assert record["template"] == str(template_repo)
    assert record["commit"] == first_commit
    assert record["context"]["cookiecutter"]["job_backend"] == "inprocess"

    git(project, "init", "--quiet", "--initial-branch", "main")
    commit_all(project, "generated")
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\nOur team's own notes.\n")
    commit_all(project, "local edit")

    makefile = template_repo / "{{cookiecutter.project_slug}}" / "Makefile"
    makefile.write_text(makefile.read_text() + "\nversion:\n\t@echo {{ cookiecutter.version }}\n")
    second_commit = commit_all(template_repo, "template v2: a `make version` target")

    # cruft renders both versions with cookiecutter: keep its replay files out of $HOME.
    env = clean_env(COOKIECUTTER_CONFIG=str(cookiecutter_config()))
    check = subprocess.run(
        [*CRUFT, "check"], cwd=project, env=env, capture_output=True, text=True, check=False
    )
    assert check.returncode != 0, "cruft check should report the project as outdated"

    update = subprocess.run(
        [*CRUFT, "update", "--skip-apply-ask"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert update.returncode == 0, update.stdout + update.stderr
    assert "version:\n\t@echo 0.1.0" in (project / "Makefile").read_text()
    assert readme.read_text().endswith("Our team's own notes.\n")
    assert json.loads((project / ".cruft.json").read_text())["commit"] == second_commit
    assert not list(project.rglob("*.rej")), "the update left conflicts"
    changed = git(project, "status", "--porcelain").splitlines()
    assert sorted(line.split(maxsplit=1)[1] for line in changed) == [".cruft.json", "Makefile"]
