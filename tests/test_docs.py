"""The README and docs/: the README stays short, every relative link resolves (file, and heading for an anchor
into a markdown file), and every page of docs/ can be reached from the README."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 15_000  # issue 19: quick start, layout, commands, the study, notebooks, reference results

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (where brackets are not links)."""
    return CODE.sub("", FENCE.sub("", text))


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of ``page``: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.replace("`", "").strip().lower()).replace(" ", "-")
            for h in HEADING.findall(FENCE.sub("", page.read_text()))}


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (f"README.md is {size} bytes (at most {README_MAX_BYTES}): move a long section "
                                      f"into docs/ and link it from the README's Documentation list")


def test_every_relative_link_points_to_an_existing_file():
    broken = []
    for page in PAGES:
        for target in relative_links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading in {dest.name})")
    assert broken == []


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in seen or page.suffix != ".md" or not page.is_file():
            continue
        seen.add(page)
        todo += [(page.parent / t.partition("#")[0]).resolve() for t in relative_links(page) if t.partition("#")[0]]
    unreachable = [str(p.relative_to(ROOT)) for p in PAGES if p.resolve() not in seen]
    assert unreachable == [], "link these from the README (or from a page it links)"


def test_the_link_checks_can_fail(tmp_path):
    """The checks above find what they look for (a guard against a regex that matches nothing)."""
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n[ok](page.md#a-title) [gone](nowhere.md) `[code](x.md)` [web](https://x.org)\n"
                    "```\n[fenced](y.md)\n```\n")
    assert relative_links(page) == ["page.md#a-title", "nowhere.md"]
    assert anchors(page) == {"a-title"}
    assert anchors(ROOT / "docs" / "performance.md") >= {"3-precision-fp32--bf16--auto"}
    assert len(relative_links(README)) >= 10
