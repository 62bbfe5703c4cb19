"""The layers of common/ (docs/architecture.md): imports point down, modes
never import each other, nothing imports in a circle, and common/ names no
experiment.

Every module's imports are read from its source (ast), function-level ones
included, so a test run needs no TensorFlow.
"""

import ast
import pathlib
import re

import pytest

import experiments

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Bottom to top; common/__init__.py and ROOT_MODULES are below them all.
ROOT_MODULES = ("common.errors", "common.inputs")
LAYERS = ("config", "data", "distribute", "runs", "training", "deploy", "modes")
# The experiments sit between deploy and modes: they use the layers, the
# modes use them.
EXPERIMENTS_LEVEL = LAYERS.index("deploy") + 1.5
DISPATCHER = "common.modes.dispatch"


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def level(module: str) -> float:
    """Where `module` (common.<layer>..., experiments...) sits; 0 for the
    root of common/."""
    parts = module.split(".")
    if parts[0] == "experiments":
        return EXPERIMENTS_LEVEL
    if len(parts) == 1 or parts[1] not in LAYERS:
        return 0
    return LAYERS.index(parts[1]) + 1


def imports_of(source: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, module imported) for every import of common or experiments in
    `source`, at any depth; `from package import name` counts as the module
    package.name where that is a module of `known`. A relative import is
    returned as "<relative>"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "<relative>"))
                continue
            base = node.module or ""
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                     for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names
                  if name.split(".")[0] in ("common", "experiments")]
    return found


def violations(sources: dict[str, str]) -> list[str]:
    """Every breach of the layering in `sources` ({module name: source}):
    an import that points up a layer (an experiment importing a mode, a
    module below the modes importing `experiments`), a mode importing
    another mode, a relative import."""
    known = set(sources)
    problems = []
    for module, source in sorted(sources.items()):
        for line, imported in imports_of(source, known):
            where = f"{module}:{line} imports {imported}"
            if imported == "<relative>":
                problems.append(f"{where}: use an absolute import")
            elif module.startswith("common.modes.") and module != DISPATCHER \
                    and imported.startswith("common.modes."):
                problems.append(f"{where}: a mode imports another mode")
            elif level(imported) > level(module):
                problems.append(f"{where}: an upward import")
    return problems


def cycles(sources: dict[str, str]) -> list[list[str]]:
    """The import circles among `sources` (strongly connected components of
    two or more modules, or a module importing itself)."""
    known = set(sources)
    graph = {m: sorted({i for _, i in imports_of(s, known) if i in known})
             for m, s in sources.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def project_sources() -> dict[str, str]:
    paths = sorted((ROOT / "common").rglob("*.py")) + sorted((ROOT / "experiments").rglob("*.py"))
    return {module_name(p, ROOT): p.read_text() for p in paths}


def test_every_module_sits_in_a_layer():
    modules = [m for m in project_sources() if m.startswith("common.")]
    loose = [m for m in modules if len(m.split(".")) == 2 and m not in ROOT_MODULES
             and m.split(".")[1] not in LAYERS]
    assert not loose, f"modules of common/ outside the layers: {loose}"
    assert {m.split(".")[1] for m in modules} >= set(LAYERS)


def test_imports_point_down_and_modes_stand_alone():
    assert violations(project_sources()) == []


def test_no_circle_of_imports():
    assert cycles(project_sources()) == []


@pytest.mark.parametrize("module, source, expected", [
    ("common.data.pipeline", "from common.training import evaluation\n", "an upward import"),
    ("common.data.pipeline", "def f():\n    from common.modes import train\n",
     "an upward import"),
    ("common.config.resolve", "import experiments\n", "an upward import"),
    ("common.modes.tune", "from common.modes import train\n", "a mode imports another mode"),
    ("common.modes.eval", "from common.modes.train import run\n",
     "a mode imports another mode"),
    ("experiments.x", "from common.modes import dispatch\n", "an upward import"),
    ("common.runs.saved", "from . import files\n", "use an absolute import"),
])
def test_the_check_fails_on_each_kind_of_breach(module, source, expected):
    sources = project_sources()
    sources[module] = source
    found = violations(sources)
    assert len(found) == 1 and found[0].startswith(f"{module}:") and expected in found[0]


def test_the_check_finds_a_circle():
    sources = {"common.data.a": "from common.data import b\n",
               "common.data.b": "from common.data.a import x\n",
               "common.data.c": "from common.data import a\n"}
    assert cycles(sources) == [["common.data.a", "common.data.b"]]


def test_every_layer_says_what_it_owns_and_may_import():
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / "common" / layer / "__init__.py").read_text()))
        assert doc and doc.startswith(f"Layer {LAYERS.index(layer) + 1}, "), layer
        assert "Imports:" in doc, layer


def experiment_mentions(texts: dict[str, str], names: list[str]) -> list[str]:
    """Every line of `texts` ({file: text}) that names one of `names` (code,
    strings, comments and docstrings alike)."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    return [f"{file}:{number}: {line.strip()}" for file, text in sorted(texts.items())
            for number, line in enumerate(text.splitlines(), 1) if pattern.search(line)]


def test_common_names_no_experiment():
    texts = {str(p.relative_to(ROOT)): p.read_text()
             for p in sorted((ROOT / "common").rglob("*.py"))}
    assert experiment_mentions(texts, experiments.names()) == []


def test_the_name_check_finds_a_mention_anywhere():
    probe = {"common/x.py": '"""Runs mnist_lenet."""\nNAME = "cifar_cnn"\n# mnist_lenet2 is no name\n'}
    assert experiment_mentions(probe, experiments.names()) == [
        'common/x.py:1: """Runs mnist_lenet."""', 'common/x.py:2: NAME = "cifar_cnn"']
