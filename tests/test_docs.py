"""The documentation's own links: every relative link names a file that exists, and every #anchor a heading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (
    "README.md",
    "docs/checkpoints.md",
    "docs/demo.md",
    "docs/method.md",
    "docs/results.md",
    "docs/speed.md",
    "docs/testing.md",
    "docs/training.md",
    "docs/world.md",
    "benchmarks/README.md",
    "experiments/README.md",
)
README_MAX_LINES = 200  # below the Space's front matter
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation but hyphens dropped,
    spaces as hyphens (what the rendered README's section links use)."""
    anchors = set()
    for line in text.splitlines():
        match = re.match(r"#+ (.+)", line)
        if match:
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_heading_anchors_follow_githubs_rule() -> None:
    assert heading_anchors("## Eq. 3's weight\n### Table 1, seed 0\nnot # a heading") == {
        "eq-3s-weight",
        "table-1-seed-0",
    }


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_and_anchor_resolves(document: str) -> None:
    source = ROOT / document
    broken = []
    for target in LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{document}: {broken}"


def test_the_demo_memory_table_is_the_one_its_results_file_gives() -> None:
    import json

    from benchmarks.app_memory import memory_table

    results = json.loads((ROOT / "results" / "app_memory.json").read_text())
    assert memory_table(results) in (ROOT / "docs" / "demo.md").read_text()


def test_the_readme_is_a_front_door() -> None:
    """At most 200 lines below the front matter, the prompt-change picture in its first screen, the two
    commands, and a link to every page of docs/."""
    text = (ROOT / "README.md").read_text()
    body = text.split("\n---\n", 1)[1] if text.startswith("---\n") else text
    lines = body.splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)
    first_screen = "\n".join(lines[:40])
    assert "](docs/app_change.png)" in first_screen
    assert "python app.py" in body and "python -m pytest" in body
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in body, page.name


def test_the_mutation_table_is_generated_from_its_results_file() -> None:
    import json

    from tests.mutation_score import DOCS_PAGE, RESULTS, TABLE_END, TABLE_START, mutation_table, unmatched_entries

    page = DOCS_PAGE.read_text()
    table = page.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    summary = json.loads(RESULTS.read_text())
    assert table == mutation_table(summary)
    assert set(summary["modules"]) >= {"pmp/prompts.py", "train/matcher.py", "pmp/metrics.py"}
    assert unmatched_entries(summary) == []  # every listed equivalent mutant is one the last run left
