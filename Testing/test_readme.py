"""The README a newcomer reads first: short, its test command is what CI runs, its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_short():
    assert len(README.splitlines()) < 200, "move reference material to docs/ and link it"


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in README.splitlines() if "pytest Testing" in line and "pip install" in line]
    assert len(commands) == 1
    assert commands[0].strip() in ci


def test_readme_and_docs_links_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_licence_file_matches_the_package_metadata():
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]
    assert "Apache-2.0" in (ROOT / "pyproject.toml").read_text()
