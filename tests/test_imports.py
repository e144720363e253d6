"The dcr_nb modules import each other one way only (core -> data -> ... -> world -> pipeline): no import cycle."
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "dcr_nb"

def module_imports(path: Path, package: str = "dcr_nb") -> set[str]:
    "The names of the `package` modules the file at `path` imports, at its top or inside a function."
    found = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level <= 1:
            mod = node.module or ""
            if node.level == 0:
                if mod != package and not mod.startswith(package + "."): continue
                mod = mod[len(package) + 1:]
            found |= {mod.split(".")[0]} if mod else {a.name for a in node.names}  # from .x import y; from . import x
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(package + ".")}
    return found

def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    "Each module of the package: the package's modules it imports."
    mods = {p.stem for p in pkg.glob("*.py") if p.stem not in ("__init__", "_modidx")}
    return {m: (module_imports(pkg / f"{m}.py") & mods) - {m} for m in mods}

def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    "One import cycle of `graph` as `[a, b, ..., a]`, or `[]` when there is none."
    state, stack = {}, []  # state: 1 while on the stack, 2 when done
    def visit(m):
        state[m] = 1; stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1: return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)): return cycle
        state[m] = 2; stack.pop()
        return []
    for m in sorted(graph):
        if m not in state and (cycle := visit(m)): return cycle
    return []

def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"pipeline": {"world"}, "world": {"pipeline"}}) == ["pipeline", "world", "pipeline"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []

def test_module_imports_reads_every_form(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from __future__ import annotations\nfrom .core import x\nfrom . import data, fetch\nimport dcr_nb.train as T\n"
                 "from sklearn.pipeline import make_pipeline\nimport numpy\n"
                 "def g():\n    from dcr_nb.encoder import y\n    from dcr_nb import figures as F\n")
    assert module_imports(f) == {"core", "data", "fetch", "train", "encoder", "figures"}

def test_no_import_cycle_between_modules():
    graph = import_graph()
    assert {"core", "pretrain", "world", "pipeline"} <= set(graph) and "pretrain" in graph["world"]  # the graph is read
    assert not (cycle := find_cycle(graph)), "import cycle: " + " -> ".join(cycle)

def test_the_command_line_and_the_fixtures_are_imported_by_no_module():
    graph = import_graph()
    for leaf in ("pipeline", "fixtures"):
        assert not (users := sorted(m for m, deps in graph.items() if leaf in deps)), f"{leaf} is imported by {users}"
