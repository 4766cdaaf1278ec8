"""mlic.caffe's place in the dependency order: the only package that knows protobuf, no
imports inside functions (they hid cycles), nothing imported from the engine, the solver
or the training driver above it."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path):
    tree = ast.parse(path.read_text(), str(path))
    top = set(id(n) for n in tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, [node.module], id(node) in top
        elif isinstance(node, ast.Import):
            yield node, [a.name for a in node.names], id(node) in top


def _files(*dirs):
    for d in dirs:
        yield from sorted((ROOT / d).rglob("*.py"))


def test_only_mlic_caffe_imports_protobuf():
    found = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in _files("mlic", "prototxt_ports", "tools")
             for n, mods, _ in _imports(p) if any(m.split(".")[0] == "google" for m in mods)
             and "mlic/caffe" not in p.as_posix()]
    assert not found, found


def test_mlic_caffe_imports_at_module_level_only():
    inner = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in _files("mlic/caffe") for n, _, top in _imports(p)
             if not top and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    # imports guarded by `if TYPE_CHECKING` or try/except at module level are still module level
    inner = [w for w in inner if not _module_level_compound(w)]
    assert not inner, inner


def _module_level_compound(where):
    path, line = where.rsplit(":", 1)
    tree = ast.parse((ROOT / path).read_text())
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)) and node.lineno <= int(line) <= node.end_lineno:
            return True
    return False


def test_mlic_caffe_imports_nothing_above_it():
    above = {"engine", "solver", "training", "compare", "deploy", "demo"}
    bad = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in _files("mlic/caffe") for n, mods, _ in _imports(p)
           if any(m.split(".")[0] == "mlic" and len(m.split(".")) > 1 and m.split(".")[1] in above for m in mods)]
    assert not bad, bad
