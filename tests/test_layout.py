"""The layers of DESIGN.md §3 hold: data flows one way across the package boundaries.

``abi`` (what crosses a boundary, as bytes) imports nothing of luo but the
errors; the hardware (``platform``) imports the ABI but never the kernel side;
packs and the kernel build on both.  Checked on the source, so that a lazy or
conditional import cannot hide a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "luo_core"
ALLOWED = {
    "abi": {"luo_core.errors", "luo_core.abi"},
    "platform": {"luo_core.errors", "luo_core._logging", "luo_core.abi", "luo_core.platform"},
}


def luo_imports(path: Path) -> set[str]:
    """The luo modules ``path`` imports; a relative import is refused (it would hide one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import; import luo_core..."
            assert node.module is not None  # (always set when the level is 0)
            found.add(node.module)
    return {name for name in found if name == "luo_core" or name.startswith("luo_core.")}


def allowed(name: str, roots: set[str]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_lower_layer_never_imports_a_higher_one(layer: str) -> None:
    modules = sorted((PACKAGE / layer).rglob("*.py"))
    assert modules
    bad = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in modules
        for name in luo_imports(path)
        if not allowed(name, ALLOWED[layer])
    }
    assert not bad, sorted(bad)


def test_no_module_imports_relatively() -> None:
    """A relative import would slip past the layer check: none, anywhere in luo_core."""
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > len(ALLOWED)
    for path in modules:
        luo_imports(path)  # raises on a relative import


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from luo_core.kernel._kernel import Kernel\n")
    assert luo_imports(module) == {"luo_core.kernel._kernel"}
    assert not allowed("luo_core.kernel._kernel", ALLOWED["platform"])


@pytest.mark.parametrize("statement", ["from . import _kernel", "from ..kernel._kernel import K"])
def test_the_check_refuses_a_relative_import(tmp_path: Path, statement: str) -> None:
    module = tmp_path / "m.py"
    module.write_text(f"def f():\n    {statement}\n")
    with pytest.raises(AssertionError, match="a relative import"):
        luo_imports(module)
