"""The dependency order, read from every import statement of the sources (those inside
functions too): mlic.solver (Caffe SGD) imports nothing else of the project, the ports
(prototxt_ports) only mlic.ops, mlic.engine (the loop) nothing above it; mlic.caffe
imports nothing above it, is the only package that knows protobuf and imports at module
level only (an import inside a function hid a cycle); nothing below the training driver
imports it; only the tools import the command-line layer (mlic.cli), and they parse no
flags themselves."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(*folders):
    """(file, import node, the modules it imports, whether it is at module level) for every
    import below the folders; `from mlic import x` imports mlic.x."""
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            top = {id(n) for n in tree.body}
            # imports guarded by `if TYPE_CHECKING` or try/except at module level are module level
            for node in tree.body:
                if isinstance(node, (ast.If, ast.Try)):
                    top.update(id(n) for n in ast.walk(node))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module] + ([f"mlic.{a.name}" for a in node.names] if node.module == "mlic" else [])
                elif isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                else:
                    continue
                yield path, node, mods, id(node) in top


def _unit(module: str):
    """The project's unit a module belongs to: 'prototxt_ports' or the X of mlic.X (None outside)."""
    parts = module.split(".")
    if parts[0] == "prototxt_ports":
        return "prototxt_ports"
    return parts[1] if parts[0] == "mlic" and len(parts) > 1 else None


def units_imported(folder: str):
    """{(unit, 'file:line')} of the project's other units imported below `folder`."""
    own = Path(folder).name
    return {(u, f"{path.relative_to(ROOT)}:{node.lineno}") for path, node, mods, _ in imports(folder)
            for u in map(_unit, mods) if u is not None and u != own}


@pytest.mark.parametrize("folder,allowed", [
    ("mlic/solver", {"errors", "integrity"}),
    # ops -> ports -> caffe: the ports know no file format (mlic.caffe reads their weights)
    ("prototxt_ports", {"ops"}),
    ("mlic/engine", {"errors", "integrity", "solver", "caffe", "data", "ops", "_ext", "prototxt_ports"}),
])
def test_lower_layers_do_not_import_upward(folder, allowed):
    bad = sorted((u, w) for u, w in units_imported(folder) if u not in allowed)
    assert not bad, bad


def test_mlic_caffe_imports_nothing_above_it():
    above = {"engine", "solver", "training", "compare", "deploy", "demo"}
    bad = sorted((u, w) for u, w in units_imported("mlic/caffe") if u in above)
    assert not bad, bad


@pytest.mark.parametrize("package", ["ops", "caffe", "data", "evaluation", "engine", "solver", "visualization"])
def test_nothing_below_training_imports_it(package):
    assert not [w for u, w in units_imported(f"mlic/{package}") if u == "training"]


def test_only_mlic_caffe_imports_protobuf():
    found = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, n, mods, _ in imports("mlic", "prototxt_ports", "tools")
             if any(m.split(".")[0] == "google" for m in mods) and "mlic/caffe" not in p.as_posix()]
    assert not found, found


def test_mlic_caffe_imports_at_module_level_only():
    inner = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, n, _, top in imports("mlic/caffe")
             if not top and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    assert not inner, inner


def test_only_the_tools_import_the_command_line():
    bad = sorted(w for u, w in units_imported("mlic") | units_imported("prototxt_ports")
                 if u == "cli" and not w.startswith("mlic/cli/"))
    assert not bad, bad


def test_the_tools_parse_no_flags_themselves():
    """tools/*.py call a main() of mlic.cli, where the flags are parsed."""
    bad = sorted(f"{p.relative_to(ROOT)}:{n.lineno}" for p, n, mods, _ in imports("tools") if "argparse" in mods)
    assert not bad, bad
