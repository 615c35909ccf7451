"""The package's shape, checked: imports go down the layer table, nothing imports in a cycle, and
modules, classes and functions stay within their size budgets.

Every import statement counts -- module level, function-local (lazy) and ``TYPE_CHECKING`` ones --
because a lazy import is still a dependency: it only moves the failure to run time. ``kernels/`` is
walked as ``fastft.kernels`` (its installed name).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the layer table, bottom first: a module may import its own rank or lower, never higher.
#: Longest dotted prefix wins; ``EXACT`` names a package ``__init__`` alone.
RANKS: dict[str, int] = {
    "fastft._backend": 0,
    "fastft._version": 0,
    "fastft._C": 0,  # the compiled extension
    "fastft._ext": 0,
    "fastft.kernels": 0,
    "fastft.ops": 1,
    "fastft.functional": 2,
    "fastft.nn": 2,
    "fastft.patching": 3,
    "fastft.lora": 3,
    "fastft.optim": 3,
    "fastft.train.errors": 4,
    "fastft.train.numerics": 4,
    "fastft.train.config": 5,
    # train libraries: every fastft.train module not named below
    "fastft.distributed": 6,
    "fastft.train": 6,
    "fastft.train.tasks": 7,
    # the run layer: data pipeline and loader, and the loop's parts
    "fastft.train.data.pipeline": 8,
    "fastft.train.data.loader": 8,
    "fastft.train.setup": 8,
    "fastft.train.step": 8,
    "fastft.train.loop": 8,
    "fastft.train.evaluate": 8,
    "fastft.train.resume": 8,
    "fastft.train.finish": 8,
    "fastft.train.report": 8,
    "fastft.train.signals": 8,
    "fastft.train.trainer": 9,
    "fastft.cli": 10,
    "fastft.cli_common": 10,
    "fastft.experiments": 10,
    "fastft.__main__": 10,
}
EXACT: dict[str, int] = {
    "fastft": 10,  # the top-level facade (its lazy table imports through importlib, by name)
    "fastft.train": 9,  # the package facade: TrainConfig, Trainer
}
LAYER_NAMES = {
    0: "kernels",
    1: "ops",
    2: "functional/nn",
    3: "patching/lora/optim",
    4: "train errors/numerics",
    5: "train config",
    6: "train libraries",
    7: "tasks",
    8: "pipeline/loop",
    9: "trainer",
    10: "cli/experiments",
}
#: packages that must not import each other in a cycle (taken as wholes).
PACKAGES = (
    "fastft.train",
    "fastft.lora",
    "fastft.patching",
    "fastft.ops",
    "fastft.experiments",
    "fastft.cli",
)
MAX_MODULE_LINES = 500
MAX_CLASS_METHODS = 20
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for ``fastft/`` and ``kernels/`` (as ``fastft.kernels``)."""
    out = {}
    for top, prefix in (("fastft", ()), ("kernels", ("fastft",))):
        for p in sorted((ROOT / top).rglob("*.py")):
            parts = [*prefix, *p.relative_to(ROOT).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = p
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


#: compiled modules: no source to walk, but a layer of their own.
COMPILED = {"fastft._C"}


def _resolve(name: str) -> str | None:
    """The module an import of ``name`` loads (a name inside a module resolves to the module)."""
    if name in COMPILED:
        return name
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(name: str, tree: ast.AST) -> list[tuple[str, int]]:
    """(imported fastft module, line) for every import statement in the module, at any depth."""
    is_pkg = MODULES[name].name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            if mod == "kernels" or mod.startswith("kernels."):
                mod = "fastft." + mod  # the source folder's name for fastft.kernels
            # ``from pkg import sub`` loads the submodule when there is one
            targets = [
                f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES or f"{mod}.{a.name}" in COMPILED else mod
                for a in node.names
            ]
        for t in targets:
            r = _resolve(t)
            if r and r != name:
                found.append((r, node.lineno))
    return found


EDGES: dict[str, dict[str, int]] = {
    name: {t: line for t, line in reversed(_imports(name, tree))} for name, tree in TREES.items()
}


def rank(name: str) -> int:
    if name in EXACT:
        return EXACT[name]
    probe = name
    while probe:
        if probe in RANKS:
            return RANKS[probe]
        probe = probe.rpartition(".")[0]
    raise KeyError(f"{name} has no layer: add it to RANKS in tests/test_layers.py")


def _where(src: str, dst: str) -> str:
    return f"{MODULES[src].relative_to(ROOT)}:{EDGES[src][dst]} imports {dst}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _cycle_report(comp: list[str], graph: dict[str, set[str]], where) -> str:
    inside = set(comp)
    edges = [where(a, b) for a in comp for b in sorted(graph[a]) if b in inside]
    return f"{len(comp)} in a cycle: {', '.join(comp)}\n    " + "\n    ".join(edges)


def test_the_walk_sees_the_package():
    # a guard that sees nothing passes for nothing: the walk must find the known layers and edges
    assert {"fastft.train.trainer", "fastft.ops", "fastft.kernels.attention", "fastft.cli"} <= set(MODULES)
    assert "fastft.train.loop" in EDGES["fastft.train.trainer"]  # a top-level import
    assert "fastft.train.data.pipeline" in EDGES["fastft.train.setup"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer():
    missing = []
    for name in MODULES:
        try:
            rank(name)
        except KeyError as e:
            missing.append(str(e))
    assert not missing, "\n".join(missing)


def test_no_module_import_cycle():
    graph = {m: set(e) for m, e in EDGES.items()}
    comps = _cycles(graph)
    assert not comps, "import cycles (lazy imports included):\n" + "\n".join(
        _cycle_report(c, graph, _where) for c in comps
    )


def _package_of(name: str) -> str | None:
    return next((p for p in PACKAGES if name == p or name.startswith(p + ".")), None)


def test_no_package_import_cycle():
    graph: dict[str, set[str]] = defaultdict(set)
    witness: dict[tuple[str, str], str] = {}
    for src, targets in EDGES.items():
        a = _package_of(src)
        for dst in targets:
            b = _package_of(dst)
            if a and b and a != b:
                graph[a].add(b)
                witness.setdefault((a, b), _where(src, dst))
    comps = _cycles(dict(graph))
    assert not comps, "package cycles:\n" + "\n".join(
        _cycle_report(c, graph, lambda a, b: witness[(a, b)]) for c in comps
    )


def _upward(edges: dict[str, dict[str, int]], where) -> list[str]:
    bad = []
    for src, targets in sorted(edges.items()):
        for dst in sorted(targets):
            if rank(dst) > rank(src):
                bad.append(
                    f"{where(src, dst)}: layer {rank(src)} ({LAYER_NAMES[rank(src)]}) may not import "
                    f"layer {rank(dst)} ({LAYER_NAMES[rank(dst)]})"
                )
    return bad


def test_imports_go_down_the_layers():
    bad = _upward(EDGES, _where)
    assert not bad, f"{len(bad)} upward imports:\n" + "\n".join(bad)


def _is_kernel(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A ``@triton.jit`` kernel: one compiled program, excepted from the function budget like kernels/
    modules are from the module budget (repeated pieces still go into jit helpers)."""
    return any("jit" in ast.unparse(d) for d in fn.decorator_list)


def _budget_breaches() -> list[str]:
    out = []
    for name, tree in TREES.items():
        rel = MODULES[name].relative_to(ROOT)
        n_lines = len(MODULES[name].read_text().splitlines())
        if not name.startswith("fastft.kernels") and n_lines > MAX_MODULE_LINES:
            out.append(f"{rel}: {n_lines} lines (budget {MAX_MODULE_LINES})")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                n = sum(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) for b in node.body)
                if n > MAX_CLASS_METHODS:
                    out.append(
                        f"{rel}:{node.lineno} class {node.name}: {n} methods (budget {MAX_CLASS_METHODS})"
                    )
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_kernel(node):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.lineno} {node.name}(): {n} lines (budget {MAX_FUNCTION_LINES})")
    return out


def test_size_budgets():
    breaches = _budget_breaches()
    assert not breaches, "over budget:\n" + "\n".join(breaches)


def test_bench_common_is_a_leaf():
    # bench/common.py is what every benchmark builds on: it must not reach back into bench/
    tree = ast.parse((ROOT / "bench" / "common.py").read_text())
    ups = [
        f"bench/common.py:{n.lineno}"
        for n in ast.walk(tree)
        if (isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").split(".")[0] == "bench"))
        or (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "bench" for a in n.names))
    ]
    assert not ups, "bench/common.py imports from bench: " + ", ".join(ups)


def test_an_upward_lazy_edge_is_named():
    # the failure names the offending edge and both layers, for a lazy import too
    tree = ast.parse("def f():\n    from fastft.train import trackers\n")
    edges = {"fastft.train.config": dict(_imports("fastft.train.config", tree))}
    bad = _upward(edges, lambda a, b: f"{a} imports {b}")
    assert bad == [
        "fastft.train.config imports fastft.train.trackers: layer 5 (train config) may not import "
        "layer 6 (train libraries)"
    ]


def test_every_package_folder_is_installed():
    # pyproject.toml lists packages by hand: a new subpackage missing there is absent from a wheel
    # (an editable install hides it)
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert folders == listed, (
        f"not in pyproject.toml packages: {sorted(folders - listed)}; stale: {sorted(listed - folders)}"
    )
