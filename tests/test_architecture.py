"""The package's structure, kept by tests: one package per layer, named after it; no import cycles; imports only
downward through the layers; train and dynamics (and study and integrations) as siblings; at most six modules
directly under circuitdyn/; no module over 300 lines; the README's Layout names the same layers in the same
order. Every import counts, including the ones inside functions (a cycle hidden in a function is still a cycle)."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "circuitdyn"
README = ROOT.parent / "README.md"
MAX_LINES = 300
MAX_TOP_MODULES = 6  # modules directly under circuitdyn/ besides __init__.py

# The layers, lowest first: one package each, named after it. A module may import modules of lower layers and
# of its own package; packages that share a layer are siblings and must not import each other. The face
# (circuitdyn/__init__.py, the curated names) stands above everything.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("tasks",),
    ("models",),
    ("graph",),
    ("attribution",),
    ("circuits",),
    ("analysis",),
    ("train", "dynamics"),
    ("study", "integrations"),
    ("cli",),
]
FACE = "__init__"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The package module that `import name` / `from name import ...` loads (a module or a package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` loads pkg.sub when it is a module; any other name comes from pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("circuitdyn"):
                r = resolve(t)
                if r and r != module:
                    found.add(r)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def group_of(module: str) -> tuple[int, str]:
    """(layer rank, package) of a module: the package directly under circuitdyn/ that holds it."""
    top = module.split(".")[1] if "." in module else FACE
    if top == FACE:
        return len(LAYERS), FACE
    for rank, layer in enumerate(LAYERS):
        if top in layer:
            return rank, top
    raise AssertionError(f"{module} is in no layer: put it in a package named in LAYERS ({__file__})")


def packages_on_disk() -> set[str]:
    return {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}


def test_every_package_is_a_layer_and_every_layer_a_package():
    named = {package for layer in LAYERS for package in layer}
    assert packages_on_disk() == named, (sorted(packages_on_disk() - named), sorted(named - packages_on_disk()))


def test_few_modules_stand_directly_under_the_package():
    top = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules directly under circuitdyn/: {top}; put them in their layer"
    for name in top:
        group_of(f"circuitdyn.{name[:-3]}")  # each still belongs to a layer


def readme_layers() -> list[tuple[str, ...]]:
    """The layers as the README's Layout block lists them (highest first there): each line that starts with
    package folders (`study/ integrations/`) opens a layer."""
    text = README.read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    layers = []
    for line in block.splitlines():
        found = re.match(r"^((?:[a-z_]+/ ?)+)", line)
        if found:
            layers.append(tuple(re.findall(r"([a-z_]+)/", found.group(1))))
    return layers[::-1]


def test_the_readme_layout_names_the_layers_in_order():
    assert readme_layers() == LAYERS


def test_every_module_has_a_layer():
    for m in MODULES:
        group_of(m)


def test_imports_only_go_down_the_layers():
    bad = []
    for m, deps in GRAPH.items():
        rank, group = group_of(m)
        for d in deps:
            d_rank, d_group = group_of(d)
            if d_rank > rank or (d_rank == rank and d_group != group):
                bad.append(f"{m} ({group}) imports {d} ({d_group})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if state.get(d) == 1:
                # a package's __init__ re-exporting its own submodules is the one allowed back edge
                cycle = stack[stack.index(d):] + [d]
                if not (d == cycle[-2].rpartition(".")[0] or m.startswith(d + ".")):
                    pytest.fail("import cycle: " + " -> ".join(cycle))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_submodules_do_not_import_their_own_package_face():
    """`from circuitdyn.train import X` inside circuitdyn/train/ would run the package's __init__ (which imports
    the submodule itself) before the submodule is done: a cycle through the face."""
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps
           if MODULES[d].name == "__init__.py" and m.startswith(d + ".") and d != "circuitdyn"]
    assert not bad, bad


def test_no_private_name_is_imported_across_modules():
    """A name with a leading underscore is its module's own: another module that needs it needs a public name."""
    bad = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("circuitdyn")):
                bad += [f"{module} imports {a.name} from {node.module}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_small(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[module]} has {n} lines; split it by concept (limit {MAX_LINES})"


def test_the_checks_see_real_imports():
    """Guards the guard: the scanner finds known edges, including one inside a function."""
    assert "circuitdyn.graph" in GRAPH["circuitdyn.attribution.attribute"]
    assert "circuitdyn.models" in GRAPH["circuitdyn.cli.main"]  # imported inside a function
    assert group_of("circuitdyn.train.loop") != group_of("circuitdyn.dynamics.ntk")


def test_the_curated_face_resolves_every_name_and_imports_lazily():
    import subprocess
    import sys

    import circuitdyn

    submodules = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert not set(circuitdyn.__all__) & submodules  # importing a submodule would rebind such a name
    for name in circuitdyn.__all__:
        assert getattr(circuitdyn, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        circuitdyn.nonexistent  # noqa: B018
    # a bare `import circuitdyn` loads neither torch nor matplotlib
    code = "import sys, circuitdyn; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_face_all_matches_its_table():
    import circuitdyn

    assert circuitdyn.__all__ == sorted(circuitdyn._HOME)


def test_runtime_type_checks_are_on_in_the_tests():
    """The test run checks jaxtyping shapes and dtypes of every circuitdyn function (see pyproject addopts):
    a score vector of integers is refused at the call."""
    import torch
    from jaxtyping import TypeCheckError

    from circuitdyn.analysis.metrics import intensity

    with pytest.raises(TypeCheckError, match="intensity"):
        intensity(torch.zeros(3, dtype=torch.long))
