"""A generated project follows its template with cruft (`cruft check`, `cruft diff`,
`cruft update`), when it was generated exactly as the root README says: from a clone of
the template, `cookiecutter . --output-dir ..`, a relative path.

The post-generation hook writes `.cruft.json` (absolute template location, commit,
answers). The story: template v1 in a git repository, a project generated from it and
committed, a local edit by the team, template v2, `cruft update`: the template's change
lands and the team's edit survives. And what a template that is not a clean git checkout
gets instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env, cookiecutter_config

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


def bake_as_the_readme_says(template: Path, *answers: str) -> subprocess.CompletedProcess[str]:
    """`cd <template clone> && cookiecutter . --output-dir ..` in a real shell (so `$PWD` is
    what a user's shell sets), answers on the command line instead of at the prompts."""
    cookiecutter = Path(sys.executable).parent / "cookiecutter"
    script = 'cd "$1" && shift && exec "$@"'
    command = [cookiecutter, ".", "--output-dir", "..", "--no-input"]
    command += ["--config-file", cookiecutter_config(), *answers]
    return subprocess.run(
        ["bash", "-c", script, "bash", template, *command],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=False,
    )


def cruft(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # cruft renders both versions with cookiecutter: keep its replay files out of $HOME.
    env = clean_env(COOKIECUTTER_CONFIG=str(cookiecutter_config()))
    return subprocess.run(
        [*CRUFT, *args], cwd=project, env=env, capture_output=True, text=True, check=False
    )


def diff_files(diff_output: str) -> list[str]:
    """The files a `cruft diff` names (`diff --git upstream-template-old/X ...`)."""
    return sorted(
        line.split()[2].split("/", 1)[1]
        for line in diff_output.splitlines()
        if line.startswith("diff --git ")
    )


def test_cruft_follows_a_project_generated_as_the_readme_says(
    template_repo: Path, tmp_path: Path
) -> None:
    first_commit = git(template_repo, "rev-parse", "HEAD")
    # The defaults (every prompt answered with Enter): a Celery project, whose `.env` holds
    # a fresh secret on every render, which cruft must not count as a difference.
    baked = bake_as_the_readme_says(template_repo)
    assert baked.returncode == 0, baked.stdout + baked.stderr
    assert "NOTE" not in baked.stderr, baked.stderr  # a clean checkout: nothing to say
    project = tmp_path / "orders-service"
    assert (project / ".env").is_file()
    record = json.loads((project / ".cruft.json").read_text())
    assert record["template"] == str(template_repo.resolve())
    assert record["commit"] == first_commit
    assert record["directory"] is None
    assert record["context"]["cookiecutter"]["job_backend"] == "celery"

    git(project, "init", "--quiet", "--initial-branch", "main")
    commit_all(project, "generated")

    check = cruft(project, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "up to date" in check.stdout
    fresh = cruft(project, "diff", "--exit-code")
    assert fresh.returncode == 0, "a fresh bake differs from its template:\n" + fresh.stdout
    assert fresh.stdout == ""

    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\nOur team's own notes.\n")
    commit_all(project, "local edit")
    edited = cruft(project, "diff", "--exit-code")
    assert edited.returncode != 0
    assert diff_files(edited.stdout) == ["README.md"], edited.stdout
    assert "Our team's own notes." in edited.stdout

    makefile = template_repo / "{{cookiecutter.project_slug}}" / "Makefile"
    makefile.write_text(makefile.read_text() + "\nversion:\n\t@echo {{ cookiecutter.version }}\n")
    second_commit = commit_all(template_repo, "template v2: a `make version` target")

    outdated = cruft(project, "check")
    assert outdated.returncode != 0, "cruft check should report the project as outdated"
    assert "out of date" in outdated.stdout

    update = cruft(project, "update", "--skip-apply-ask")
    assert update.returncode == 0, update.stdout + update.stderr
    assert "version:\n\t@echo 0.1.0" in (project / "Makefile").read_text()
    assert readme.read_text().endswith("Our team's own notes.\n")
    assert not list(project.rglob("*.rej")), "the update left conflicts"
    changed = git(project, "status", "--porcelain").splitlines()
    assert sorted(line.split(maxsplit=1)[1] for line in changed) == [".cruft.json", "Makefile"]
    # cruft rewrites .cruft.json in its own layout: the hook wrote the same, so only the
    # commit changes (no reordered keys, no added ones).
    record_diff = git(project, "diff", "--unified=0", "HEAD", "--", ".cruft.json").splitlines()
    changes = [line for line in record_diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert len(changes) == 4, "\n".join(record_diff)
    assert all(first_commit in line for line in changes if line.startswith("-"))
    assert all(second_commit in line for line in changes if line.startswith("+"))
    commit_all(project, "cruft update")

    assert cruft(project, "check").returncode == 0
    after = cruft(project, "diff", "--exit-code")
    assert diff_files(after.stdout) == ["README.md"], after.stdout


def test_uncommitted_template_changes_are_recorded_as_the_last_commit_and_said(
    template_repo: Path, tmp_path: Path
) -> None:
    head = git(template_repo, "rev-parse", "HEAD")
    makefile = template_repo / "{{cookiecutter.project_slug}}" / "Makefile"
    makefile.write_text(makefile.read_text() + "\n# not committed yet\n")
    baked = bake_as_the_readme_says(template_repo, "job_backend=inprocess")
    assert baked.returncode == 0, baked.stdout + baked.stderr
    notes = [line for line in baked.stderr.splitlines() if line.startswith("NOTE")]
    assert len(notes) == 1, baked.stderr
    assert "uncommitted changes" in notes[0]
    assert head[:12] in notes[0]
    record = json.loads((tmp_path / "orders-service" / ".cruft.json").read_text())
    assert record["commit"] == head
    assert record["template"] == str(template_repo.resolve())


def test_a_template_that_is_not_a_git_checkout_is_recorded_and_said(tmp_path: Path) -> None:
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE_ROOT, template, ignore=IGNORED)
    baked = bake_as_the_readme_says(template, "job_backend=inprocess")
    assert baked.returncode == 0, baked.stdout + baked.stderr
    notes = [line for line in baked.stderr.splitlines() if line.startswith("NOTE")]
    assert len(notes) == 1, baked.stderr
    assert "not a git checkout" in notes[0]
    project = tmp_path / "orders-service"
    record = json.loads((project / ".cruft.json").read_text())
    assert record["template"] == str(template.resolve())
    assert record["commit"] is None
    # What the note warns of: cruft cannot follow such a template.
    check = cruft(project, "check")
    assert check.returncode != 0
    assert "Failed to clone" in check.stdout + check.stderr
