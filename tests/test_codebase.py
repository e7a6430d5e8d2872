"""Structural rules of the codebase (docs/design.md, "Code layout rules"), checked on the source text.

- no function longer than 80 lines in the product packages;
- the project's modules import one another at module level, and the module-level import graph has no cycle;
- a function-level import names only an optional or heavy third-party module (listed below with the reason);
- library module basenames are unique across `sambay_model/`, `data/` and `train/` (the `scripts/` files keep
  their stage names: `python scripts/pipeline.py` is the driver, the others say which console script replaced them);
- the package layers (MAY_IMPORT) and the Hydra entry boilerplate written once (recipes/entry.py).
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sambay_model", "recipes", "data", "train", "scripts")
LIBRARIES = ("sambay_model", "data", "train")
MAX_FUNCTION_LINES = 80
# Third-party modules a function may import locally, and why.
LOCAL_IMPORT_OK = {
    "lm_eval": "optional extra (lm-eval harness); imported only by the harness evaluation",
    "matplotlib": "plotting is only for the report figure; a ~0.5 s import the training stages never need",
    "wandb": "heavy (~1 s) and only when W&B logging is on",
    "math_verify": "symbolic fallback of the grader; a slow import (sympy) most gradings never reach",
    "reasoning_gym": "optional data source (reasoning.source=gsm_symbolic)",
    "triton": "optional GPU kernels; absent from CPU-only installs",
    "mamba_ssm": "optional CUDA kernel package",
    "causal_conv1d": "optional CUDA kernel package",
    "flash_attn": "optional CUDA kernel package",
}


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _project_target(node: ast.ImportFrom | ast.Import, module: str) -> list[str]:
    """Project modules an import statement names (resolving relative imports against ``module``)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            pkg = module.split(".")
            is_pkg = MODULES[module].name == "__init__.py"
            anchor = pkg if is_pkg else pkg[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    return sorted({n for n in names if n in MODULES or n.split(".")[0] in PACKAGES})


def _functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_is_longer_than_80_lines():
    long = [f"{MODULES[m].relative_to(ROOT)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for m in MODULES for f in _functions(ast.parse(MODULES[m].read_text()))
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_function_level_imports_are_only_optional_heavy_modules():
    bad = []
    for m, path in MODULES.items():
        for f in _functions(ast.parse(path.read_text())):
            for node in ast.walk(f):
                if isinstance(node, ast.Import):
                    tops = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    tops = ["." if node.level else (node.module or "").split(".")[0]]
                else:
                    continue
                if any(t not in LOCAL_IMPORT_OK for t in tops):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} in {f.name}(): {ast.unparse(node)}")
    assert not bad, "imports inside functions (move to the module top):\n" + "\n".join(sorted(set(bad)))


def _import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for m, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[m].update(t for t in _project_target(node, m) if t != m)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(set(MODULES) | set(graph)):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_module_level_imports_have_no_cycle():
    cycle = _cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}} | {m: set() for m in MODULES}) == ["a", "b", "c", "a"]


def test_library_module_basenames_are_unique():
    seen = defaultdict(list)
    for m, path in MODULES.items():
        if m.split(".")[0] in LIBRARIES and path.name != "__init__.py":
            seen[path.stem].append(str(path.relative_to(ROOT)))
    assert not {k: v for k, v in seen.items() if len(v) > 1}


# Which packages each package may import (docs/design.md, "Layout"): the model stands alone, the recipes package
# (the Hydra config tree and the one entry-point helper, recipes/entry.py) imports no project code, data never
# reaches into training, nothing imports the entry-point scripts.
MAY_IMPORT = {"sambay_model": {"sambay_model"}, "recipes": {"recipes"}, "data": {"data", "sambay_model", "recipes"},
              "train": {"train", "data", "sambay_model", "recipes"}, "scripts": set(PACKAGES)}


def test_packages_import_only_the_layers_below():
    bad = []
    for m, path in MODULES.items():
        pkg = m.split(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {t}" for t in _project_target(node, m)
                        if t.split(".")[0] not in MAY_IMPORT[pkg]]
    assert not bad, "\n".join(bad)


# Which rooms of train/ each train/ module may import (train/__init__.py, docs/layout.md): the run plumbing stands
# on the shared schema alone, the evaluation suite on the plumbing, the DeepSpeed engine and DPO's parts on those,
# and the entry points (train/<name>.py) on every room but never on one another.
ENTRY = "train (entry points)"
ROOM_MAY_IMPORT = {
    "train.config": {"train.config"},
    "train.runtime": {"train.config", "train.runtime"},
    "train.evals": {"train.config", "train.runtime", "train.evals"},
    "train.engine": {"train.config", "train.runtime", "train.engine"},
    "train.alignment": {"train.config", "train.runtime", "train.evals", "train.alignment"},
    ENTRY: {"train.config", "train.runtime", "train.evals", "train.engine", "train.alignment"},
}


def _room(module: str) -> str:
    """``train.<room>`` for a room's modules (and the room itself), ``train.config``, else the entry points."""
    parts = module.split(".")
    path = MODULES.get(module)
    if len(parts) > 2 or module == "train.config" or (path is not None and path.name == "__init__.py"):
        return ".".join(parts[:2])
    return ENTRY


def test_train_rooms_import_only_the_rooms_below():
    bad = []
    for m, path in MODULES.items():
        if not m.startswith("train.") or path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} ({_room(m)}) imports {t} ({_room(t)})"
                        for t in _project_target(node, m) if t.startswith("train.")
                        and _room(t) not in ROOM_MAY_IMPORT[_room(m)]]
    assert not bad, "\n".join(bad)


def test_every_train_module_is_in_a_room_or_an_entry_point():
    """A new file in a room gets its room's rules; a new file at the top of train/ must be an entry point."""
    rooms = {p.name for p in (ROOT / "train").iterdir() if (p / "__init__.py").is_file()}
    assert {f"train.{r}" for r in rooms} | {"train.config", ENTRY} == set(ROOM_MAY_IMPORT)
    top = [p.stem for p in (ROOT / "train").glob("*.py") if p.stem not in ("__init__", "config")]
    not_entry = [s for s in top if "__main__" not in (ROOT / "train" / f"{s}.py").read_text()]
    assert not not_entry, f"train/ top-level modules that are not entry points (move them into a room): {not_entry}"


def test_hydra_entry_boilerplate_is_written_once():
    """Every entry point builds its main() with recipes.entry.hydra_main; no other module decorates with
    hydra.main (the schema registration, recipe folder and exit-status handling live in one place)."""
    own = [str(path.relative_to(ROOT)) for m, path in MODULES.items() if m != "recipes.entry"
           and any(isinstance(n, ast.Attribute) and n.attr == "main" and isinstance(n.value, ast.Name)
                   and n.value.id == "hydra" for n in ast.walk(ast.parse(path.read_text())))]
    assert not own, "use recipes.entry.hydra_main instead of hydra.main in: " + ", ".join(own)
