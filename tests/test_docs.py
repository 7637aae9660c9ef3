"""The documentation a newcomer reads first: every module placed in the architecture table, every link landing."""

from __future__ import annotations

import re

import pytest

from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_library_module_is_in_the_architecture_table():
    table = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| [^|]+ \| `(habla/[\w/]+\.py)` \|", table, flags=re.MULTILINE))
    modules = {str(p.relative_to(REPO)) for p in (REPO / "habla").rglob("*.py") if p.name != "__init__.py"}
    assert modules - listed == set(), "add these modules to docs/architecture.md"
    assert listed - modules == set(), "these modules no longer exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_lands_on_a_file(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readme_stays_a_front_door():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250, "move detail into docs/ and link it"
    for page in (REPO / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"the README does not link docs/{page.name}"
