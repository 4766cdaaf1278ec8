"""Dependencies one way: mlic.solver (Caffe SGD) imports nothing else of the project,
the ports (prototxt_ports) only mlic.ops,
mlic.engine (the loop) nothing above it, and only the demo imports mlic.training.
Function-local imports count too."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def project_imports(package: str):
    """{(imported top-level unit, 'file:line')} of every import under mlic/<package>
    (or the top-level prototxt_ports)."""
    found = set()
    folder = ROOT / package if package == "prototxt_ports" else ROOT / "mlic" / package
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module] + ([f"mlic.{a.name}" for a in node.names] if node.module == "mlic" else [])
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for m in mods:
                parts = m.split(".")
                if parts[0] == "prototxt_ports":
                    unit = "prototxt_ports"
                elif parts[0] == "mlic" and len(parts) > 1:
                    unit = parts[1]
                else:
                    continue
                if unit != package:
                    found.add((unit, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return found


@pytest.mark.parametrize("package,allowed", [
    ("solver", {"errors", "integrity"}),
    # ops -> ports -> caffe: the ports know no file format (mlic.caffe reads their weights)
    ("prototxt_ports", {"ops"}),
    ("engine", {"errors", "integrity", "solver", "caffe", "data", "ops", "_ext", "prototxt_ports"}),
])
def test_lower_layers_do_not_import_upward(package, allowed):
    bad = sorted((u, w) for u, w in project_imports(package) if u not in allowed)
    assert not bad, bad


@pytest.mark.parametrize("package", ["ops", "caffe", "data", "evaluation", "engine", "solver", "visualization"])
def test_nothing_below_training_imports_it(package):
    assert not [w for u, w in project_imports(package) if u == "training"]


def test_caffe_does_not_import_the_solver():
    assert not [w for u, w in project_imports("caffe") if u == "solver"]
