"""Real text that installs offline: Debian documentation packages (unpacked, never installed) and the
Python standard library sources.

Debian packages are fetched with ``apt-get download`` (the package registry) into a cache directory and
unpacked with ``dpkg -x``; HTML is stripped with the stdlib parser. When apt is unavailable the Python
stdlib sources (present on every machine) are the fallback.
"""
from __future__ import annotations

import glob
import gzip
import html.parser
import logging
import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from data.dir_lock import RunLock

log = logging.getLogger(__name__)

# Where each documentation package keeps its text once unpacked (globs relative to the unpack root).
DEBIAN_TEXT_GLOBS: dict[str, tuple[str, ...]] = {
    "python3.11-doc": ("usr/share/doc/python3.11/html/_sources/**/*.rst.txt",),
    "linux-doc-6.1": ("usr/share/doc/linux-doc-6.1/html/_sources/**/*.rst.txt",),
    "perl-doc": ("usr/share/perl/5.36.0/pod/*.pod",),
    "postgresql-doc-15": ("usr/share/doc/postgresql-doc-15/html/*.html",),
    "sqlite3-doc": ("usr/share/doc/sqlite3/**/*.html",),
    "debian-reference-en": ("usr/share/debian-reference/**/*.en.html", "usr/share/doc/debian-reference-en/**/*.html"),
}


@dataclass(frozen=True)
class Document:
    """One corpus document and where it came from."""

    source: str
    text: str


class _TextExtractor(html.parser.HTMLParser):
    """Visible text of an HTML page (script/style dropped)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "pre", "tr", "dt", "dd"):
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def strip_html(page: str) -> str:
    """Visible text with runs of blank lines collapsed."""
    p = _TextExtractor()
    p.feed(page)
    p.close()
    lines = [line.rstrip() for line in "".join(p.parts).splitlines()]
    out, blank = [], False
    for line in lines:
        if line.strip():
            out.append(line)
            blank = False
        elif not blank:
            out.append("")
            blank = True
    return "\n".join(out).strip()


def fetch_debian_packages(packages: Sequence[str], cache_dir: str | os.PathLike) -> Path:
    """Download (``apt-get download``) and unpack (``dpkg -x``) ``packages`` into ``cache_dir/root``.

    Already unpacked packages are skipped (a ``.done`` marker per package). Runs ``apt-get update`` once if
    the package lists are missing. Raises RuntimeError when apt cannot provide a package. Concurrent calls on
    one cache directory (other processes included) take turns.
    """
    cache = Path(cache_dir).resolve()
    # Prepares into different data directories share this cache; two unpacking at once would share one temp dir,
    # each deleting what the other copies.
    with RunLock(cache / ".lock", wait=True):
        for pkg in packages:
            if not (cache / f"{pkg}.done").exists():
                _fetch_one(pkg, cache)
        (cache / "root").mkdir(exist_ok=True)
    return cache / "root"


def _fetch_one(pkg: str, cache: Path) -> None:
    """Download and unpack one package into ``cache/root``, then write its marker (the caller holds the lock)."""
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise RuntimeError("apt-get/dpkg not found: cannot fetch Debian documentation packages")
    found = list(debs.glob(f"{pkg}_*.deb"))
    if not found:
        r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
        if r.returncode != 0:
            log.info("apt-get download %s failed (%s); running apt-get update once", pkg, r.stderr.strip()[-200:])
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
            r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"apt-get download {pkg} failed: {r.stderr.strip()[-500:]}")
        found = list(debs.glob(f"{pkg}_*.deb"))
    # Unpack into a temp root first so an interrupted dpkg never marks a package done.
    tmp = cache / f"{pkg}.unpack"
    shutil.rmtree(tmp, ignore_errors=True)
    for deb in found:
        subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True, capture_output=True)
    shutil.copytree(tmp, root, dirs_exist_ok=True, symlinks=True)
    shutil.rmtree(tmp, ignore_errors=True)
    (cache / f"{pkg}.done").write_text("ok\n")


def _read_text(path: Path) -> str | None:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError, EOFError):
        log.warning("skipping unreadable corpus file %s", path)
        return None


def check_debian_packages(packages: Sequence[str]) -> None:
    """Refuse a package whose text layout is not in ``DEBIAN_TEXT_GLOBS`` (before anything is downloaded)."""
    for pkg in packages:
        if pkg not in DEBIAN_TEXT_GLOBS:
            raise ValueError(f"no text layout known for Debian package {pkg!r}; known: {sorted(DEBIAN_TEXT_GLOBS)}")


def iter_debian_documents(packages: Sequence[str], root: str | os.PathLike) -> Iterator[Document]:
    """Documents (one per file, sorted paths) of the unpacked packages; HTML is reduced to text."""
    root = Path(root)
    check_debian_packages(packages)
    for pkg in packages:
        files = sorted({p for g in DEBIAN_TEXT_GLOBS[pkg] for p in glob.glob(str(root / g), recursive=True)})
        files = [f for f in files if "/translations/" not in f]
        if not files:
            raise RuntimeError(f"package {pkg} unpacked to {root} but no text files matched {DEBIAN_TEXT_GLOBS[pkg]}")
        for f in files:
            text = _read_text(Path(f))
            if text is None:
                continue
            if f.endswith((".html", ".htm")):
                text = strip_html(text)
            if text.strip():
                yield Document(f"{pkg}:{os.path.relpath(f, root)}", text)


def iter_stdlib_documents() -> Iterator[Document]:
    """Python standard library sources (tests and site-packages excluded), sorted by path."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(stdlib.rglob("*.py")):
        rel = f.relative_to(stdlib).as_posix()
        parts = rel.split("/")
        if parts[0] == "site-packages" or any(p in ("test", "tests", "idle_test") for p in parts[:-1]):
            continue
        text = _read_text(f)
        if text and text.strip():
            yield Document(f"stdlib:{rel}", text)


def collect_corpus(debian_packages: Sequence[str], include_stdlib: bool, cache_dir: str | os.PathLike,
                   max_chars: int = 0) -> list[Document]:
    """The demo corpus: Debian docs (falling back to the stdlib if apt fails) plus, optionally, the stdlib.

    ``max_chars`` > 0 caps the total size; documents are taken in a fixed interleaved order across sources
    so a cap keeps every source represented.
    """
    streams: list[list[Document]] = []
    if debian_packages:
        try:
            root = fetch_debian_packages(debian_packages, cache_dir)
            for pkg in debian_packages:
                streams.append(list(iter_debian_documents([pkg], root)))
        except RuntimeError as e:
            log.warning("Debian documentation unavailable (%s); using the Python stdlib sources instead", e)
            include_stdlib = True
    if include_stdlib:
        streams.append(list(iter_stdlib_documents()))
    if not streams or not any(streams):
        raise RuntimeError("empty corpus: no Debian packages and no stdlib sources")
    out, total = [], 0
    for i in range(max(len(s) for s in streams)):
        for s in streams:
            if i < len(s):
                if max_chars and total + len(s[i].text) > max_chars:
                    return out if out else [s[i]]
                out.append(s[i])
                total += len(s[i].text)
    return out
