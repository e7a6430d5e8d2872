"""Structural rules of the test suite itself (docs/design.md, the `tests/` row of "Layout").

- no test module imports from another test module: shared fixtures live in `conftest.py`, shared plain helpers
  in non-test modules (`tests/train/builders.py`, `tests/data/builders.py`, `tests/sambay_model/reference_ops.py`);
- slow end-to-end tests live in `test_*_e2e.py` files, so the fast suite maps a module to its test file, and an
  `_e2e` file holds nothing else.
"""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Slow tests that stay beside fast ones, and why.
SLOW_OUTSIDE_E2E = {
    "scripts/test_readme_commands.py": "runs the README's `make demo` next to the README parsing it checks",
    "scripts/test_gpu_check_dryrun.py": "issue 20's GPU-check dry run, kept as it landed",
    "sambay_model/test_lm_head_loss.py": "a large-memory check of one module's precision, not an end-to-end run",
}


def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if ".venv" not in p.parts)


def _is_slow(node: ast.AST) -> bool:
    return "mark.slow" in ast.unparse(node)


def _slow_and_fast(tree: ast.Module) -> tuple[list[str], list[str]]:
    module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)
                      and _is_slow(n.value) for n in tree.body)
    tests = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    slow = [t.name for t in tests if module_slow or any(_is_slow(d) for d in t.decorator_list)]
    return slow, [t.name for t in tests if t.name not in slow]


def test_no_test_module_imports_another_test_module():
    bad = []
    for path in _test_files():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(TESTS)}:{node.lineno} imports {n}" for n in names
                    if n.startswith("tests.") and n.rsplit(".", 1)[-1].startswith("test_")]
    assert not bad, "move shared helpers to conftest.py or a builders module:\n" + "\n".join(bad)


def test_slow_tests_live_in_e2e_files_and_e2e_files_hold_only_slow_tests():
    misplaced, fast_in_e2e = [], []
    for path in _test_files():
        if not path.name.startswith("test_"):
            continue
        rel = str(path.relative_to(TESTS))
        slow, fast = _slow_and_fast(ast.parse(path.read_text()))
        if path.stem.endswith("_e2e"):
            fast_in_e2e += [f"{rel}::{name}" for name in fast]
        elif rel not in SLOW_OUTSIDE_E2E:
            misplaced += [f"{rel}::{name}" for name in slow]
    assert not misplaced, "slow tests outside a test_*_e2e.py file:\n" + "\n".join(misplaced)
    assert not fast_in_e2e, "fast tests in an _e2e file:\n" + "\n".join(fast_in_e2e)


def test_the_exceptions_are_still_needed():
    for rel in SLOW_OUTSIDE_E2E:
        assert _slow_and_fast(ast.parse((TESTS / rel).read_text()))[0], f"{rel} has no slow test left: drop it"
