"""The project's import graph: no cycle between its modules (imports inside functions and packages' `__init__`
included), no import of another module's private names, one hop from a stage's door to the package that runs it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "models", "hydra_plugins")


def module_files() -> dict[str, Path]:
    """{dotted module name: file} of every project module (a package is its `__init__.py`)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import anywhere in the file (functions included).
    Importing `a.b.c` also runs the packages `a` and `a.b`: they count as imported too."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [alias.name for alias in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            found.append((base, [n for n in names if f"{base}.{n}" not in modules], node.lineno))
            found.extend((sub, [], node.lineno) for sub in submodules)
    edges = []
    for target, names, line in found:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in modules and prefix != name:
                edges.append((prefix, names if i == len(parts) else [], line))
    return edges


def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: {target for target, _, _ in imports_of(path, name, modules)} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_the_projects_modules():
    found = cycles(graph())
    assert not found, "import cycles (imports inside functions and packages' __init__ counted): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_no_import_of_another_modules_private_names():
    modules = module_files()
    offenders = []
    for name, path in modules.items():
        for target, names, line in imports_of(path, name, modules):
            offenders += [f"{path.relative_to(ROOT)}:{line} takes {target}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    assert not offenders, "\n".join(offenders)


def test_a_stage_door_is_one_hop_from_the_module_that_runs_it():
    """`stages/NAME.py` imports the `run` of `pipeline.<family>.NAME` and nothing else of the project's but the
    config machinery."""
    modules = module_files()
    for door in sorted((ROOT / "stages").glob("*.py")):
        if door.name == "__init__.py":
            continue
        name = f"stages.{door.stem}"
        targets = {t for t, _, _ in imports_of(door, name, modules)}
        runners = [t for t in targets if t.startswith("pipeline.") and t.endswith(f".{door.stem}")]
        assert len(runners) == 1, f"{door.name}: runs {runners or 'no pipeline module named after it'}"
        assert (modules[runners[0]].read_text().count("\ndef run(") == 1), f"{runners[0]} has no run()"
        others = targets - {runners[0], "pipeline", runners[0].rsplit(".", 1)[0]}
        assert others <= {"pipeline.config", "pipeline.config.check"}, f"{door.name} also imports {others}"
