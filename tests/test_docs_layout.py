"""The docs stay true to the tree: docs/layout.md has a line for every product file and names no path that is
gone, and every relative link in README.md and docs/*.md points at a file that exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "docs" / "layout.md"
# What docs/layout.md must name file by file: the packages' Python files, the shell entry points, the Slurm files
# and the top-level build files. Recipe YAML files are summarised by folder (PRODUCT_FOLDERS).
PRODUCT_GLOBS = ("sambay_model/**/*.py", "data/**/*.py", "train/**/*.py", "recipes/**/*.py", "scripts/*.py",
                 "scripts/*.sh", "bench/*.py", "slurm/*", "Makefile", "pyproject.toml", "constraints*.txt")
PRODUCT_FOLDERS = "recipes/*/"
# A backticked token whose first component is one of these names a path of the repository.
PATH_ROOTS = ("sambay_model", "data", "train", "recipes", "scripts", "bench", "slurm", "tests", "docs", ".ci")
TOP_FILES = re.compile(r"Makefile|pyproject\.toml|constraints[\w.-]*\.txt")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def product_paths() -> set[str]:
    found = {p for pattern in PRODUCT_GLOBS for p in ROOT.glob(pattern) if p.is_file()}
    found |= {p for p in ROOT.glob(PRODUCT_FOLDERS) if p.is_dir() and p.name != "__pycache__"}
    rel = {str(p.relative_to(ROOT)) + ("/" if p.is_dir() else "") for p in found}
    return {r for r in rel if "__pycache__" not in r}


def named_paths(text: str) -> set[str]:
    """The repository paths a page names in backticks (``sambay_model/cache.py``, ``recipes/model/``, ``Makefile``)."""
    tokens = re.findall(r"`([^`\s]+)`", text)
    return {t for t in tokens if t.split("/")[0] in PATH_ROOTS and "/" in t or TOP_FILES.fullmatch(t)}


def missing_and_stale(text: str) -> tuple[list[str], list[str]]:
    named = named_paths(text)
    missing = sorted(product_paths() - named)
    stale = sorted(p for p in named if not (ROOT / p).exists())
    return missing, stale


def test_layout_names_every_product_file_and_only_paths_that_exist():
    missing, stale = missing_and_stale(LAYOUT.read_text())
    assert not missing, "docs/layout.md has no line for: " + ", ".join(missing)
    assert not stale, "docs/layout.md names paths that do not exist: " + ", ".join(stale)


def test_layout_check_catches_a_removed_line_and_a_stale_path():
    lines = LAYOUT.read_text().splitlines()
    without = "\n".join(ln for ln in lines if not ln.startswith("- `data/loader.py`"))
    assert "data/loader.py" in missing_and_stale(without)[0]
    assert "train/no_such_module.py" in missing_and_stale(LAYOUT.read_text() + "\n- `train/no_such_module.py`: x\n")[1]


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def broken_links(page: Path) -> list[str]:
    """The link targets of ``page`` that are neither a URL nor an anchor and name no existing file (relative to the
    page's folder, as a Markdown viewer resolves them)."""
    bad = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z][a-z+.-]*:", target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#", 1)[0]).exists():
            bad.append(target)
    return bad


def test_every_relative_link_in_the_docs_points_at_a_file_that_exists():
    bad = [f"{page.relative_to(ROOT)}: {target}" for page in doc_pages() for target in broken_links(page)]
    assert not bad, "links to files that do not exist:\n" + "\n".join(bad)


def test_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[ok](page.md), [web](https://example.org/x.md), [anchor](#top), [here](page.md#top), "
                    "[gone](docs/nowhere.md)\n")
    assert broken_links(page) == ["docs/nowhere.md"]
