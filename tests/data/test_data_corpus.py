"""Demo corpus helpers: HTML stripping, stdlib documents, size caps (no apt access needed)."""
from __future__ import annotations

import pytest

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
