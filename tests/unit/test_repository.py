"""The repository stands alone: its links resolve inside it and its tests read only it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# [text](target) in Markdown, where target is not a URL or an anchor of the same page
LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)\s]+)\)")
# a path that climbs out of its folder into a sibling of the repository, or an absolute one
OUTSIDE = re.compile(r"\.\./shared|/work/|\.\./\.\./\.\.")


def tracked(*patterns: str) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in listed]


def documents() -> list[Path]:
    return [p for p in tracked("*.md") if "bench/results" not in p.as_posix()]


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(document: Path) -> None:
    for target in LINK.findall(document.read_text()):
        path = (document.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{target} leaves the repository"
        assert path.exists(), f"{target} does not exist"


def test_the_readme_names_no_file_outside_the_repository() -> None:
    assert not OUTSIDE.search((ROOT / "README.md").read_text())


def test_no_test_reads_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    offenders = [
        str(p.relative_to(ROOT))
        for p in tracked("tests/*.py")
        if p != this and OUTSIDE.search(p.read_text())
    ]
    assert not offenders


def test_the_config_corpus_is_in_the_repository_with_its_note() -> None:
    corpus = ROOT / "tests" / "data" / "envoyproxy-ratelimit"
    note = (corpus / "README.md").read_text()
    assert "Apache" in note and "envoyproxy/ratelimit" in note
    assert len(list(corpus.rglob("*.yaml"))) > 20
