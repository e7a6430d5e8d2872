"""The op modules import in one direction: pure-PyTorch ops <- kernel adapters <- dispatch (see ops/backend.py)."""
import ast
from pathlib import Path

import sambay_model.ops

OPS_DIR = Path(sambay_model.ops.__file__).parent

# A module may import only modules of a strictly lower layer.
LAYERS = {
    "linear_scan": 0, "backend": 0, "kernel_launch": 0,
    "selective_scan": 1, "conv": 1, "attention": 1,
    "cuda_kernels": 2, "triton_scan": 2, "triton_conv": 2, "triton_attention": 2,
    "dispatch": 3,
    "__init__": 4,
}


def _relative_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)  # from . import x
    return found


def test_every_ops_module_has_a_layer():
    assert {p.stem for p in OPS_DIR.glob("*.py")} == set(LAYERS)


def test_imports_point_down_the_layers():
    for path in OPS_DIR.glob("*.py"):
        for target in _relative_imports(path):
            assert LAYERS[target] < LAYERS[path.stem], f"ops/{path.name} imports ops/{target}.py (same or higher layer)"
