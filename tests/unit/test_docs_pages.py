"""docs/: the pages exist, every picture they show is one the browser tests make (make docs-screenshots) and is
small, and every tab's picture is in the user guide."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.test_docs_and_layout import MAX_PNG_BYTES, TABS

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ("user-guide.md", "troubleshooting.md", "api.md", "chroma-guide.md", "architecture.md")


def made_by_tests() -> set[str]:
    """The picture names tests/e2e/test_docs_and_layout.py writes."""
    names = {f"{name}.png" for _, _, name in TABS}
    names |= {f"theme-{theme}-monitor.png" for theme in ("light", "dark")}
    names |= {f"{tab}-{width}px.png" for tab in ("wizard", "monitor") for width in (390, 2560)}
    return names


def test_pages_exist_and_link_only_existing_pages_and_pictures():
    for page in PAGES:
        text = (DOCS / page).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not target.startswith("http"):
                assert (DOCS / target).exists(), f"{page} links {target}"


def test_every_picture_is_made_by_the_browser_tests_and_small():
    pictures = {p.name for p in (DOCS / "images").glob("*")}
    assert pictures == made_by_tests()
    for name in pictures:
        assert (DOCS / "images" / name).stat().st_size < MAX_PNG_BYTES, name


def test_the_user_guide_shows_every_tab_and_both_screen_sizes():
    guide = (DOCS / "user-guide.md").read_text(encoding="utf-8")
    shown = set(re.findall(r"\(images/([^)]+)\)", guide))
    assert made_by_tests() <= shown
