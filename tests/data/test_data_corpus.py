"""Demo corpus helpers: HTML stripping, stdlib documents, size caps (no apt access needed)."""
from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from data import corpus
from data.corpus import DEBIAN_TEXT_GLOBS, collect_corpus, iter_debian_documents, iter_stdlib_documents, strip_html


def test_strip_html_keeps_visible_text_only():
    page = ("<html><head><style>p {color: red}</style><script>var x = 1;</script></head><body>"
            "<h1>Title</h1><p>First &amp; second.</p>\n\n\n\n<p>Third</p><pre>code()</pre></body></html>")
    text = strip_html(page)
    assert "color" not in text and "var x" not in text
    assert text.splitlines()[0] == "Title" and "First & second." in text and "code()" in text
    assert "\n\n\n" not in text


def test_stdlib_documents_exclude_tests():
    docs = list(iter_stdlib_documents())
    assert len(docs) > 100
    names = [d.source for d in docs]
    assert "stdlib:json/__init__.py" in names
    assert not any("/test/" in n or n.startswith("stdlib:test/") or "site-packages" in n for n in names)


def test_collect_corpus_cap_and_order(tmp_path):
    docs = collect_corpus([], include_stdlib=True, cache_dir=tmp_path, max_chars=200_000)
    assert 0 < sum(len(d.text) for d in docs) <= 200_000
    assert docs == collect_corpus([], include_stdlib=True, cache_dir=tmp_path, max_chars=200_000)


def test_unknown_debian_package_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no text layout known"):
        list(iter_debian_documents(["not-a-doc-package"], tmp_path))
    with pytest.raises(RuntimeError, match="no text files matched"):
        list(iter_debian_documents(["python3.11-doc"], tmp_path))
    assert "python3.11-doc" in DEBIAN_TEXT_GLOBS


def test_concurrent_fetches_into_one_cache_download_and_unpack_once(tmp_path, monkeypatch):
    """Two prepares sharing a cache (two xdist workers, two users): the second waits for the first and reuses its
    unpacked tree. apt-get and dpkg are stand-ins that take a while, so without the lock both would run."""
    calls = []

    def fake_run(cmd, cwd=None, **kwargs):
        calls.append(cmd[:2])
        time.sleep(0.3)
        if cmd[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{cmd[2]}_1.0_all.deb").write_bytes(b"deb")
        elif cmd[:2] == ["dpkg", "-x"]:
            page = Path(cmd[3]) / "usr/share/doc/pkg/page.txt"
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text("documentation")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(corpus, "subprocess", SimpleNamespace(run=fake_run))
    monkeypatch.setattr(corpus.shutil, "which", lambda name: f"/usr/bin/{name}")
    with ThreadPoolExecutor(2) as pool:  # flock locks are per open file, so two threads exclude each other too
        roots = list(pool.map(lambda _: corpus.fetch_debian_packages(["pkg"], tmp_path / "cache"), range(2)))
    assert calls == [["apt-get", "download"], ["dpkg", "-x"]]
    assert roots[0] == roots[1] and (roots[0] / "usr/share/doc/pkg/page.txt").read_text() == "documentation"
