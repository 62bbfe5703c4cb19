"""Every public name of common/ says what it promises, in the Google style
of TF Model Garden's distribute_utils.py: a docstring with Args where it
takes arguments, Returns (Yields) where it returns (yields) a value, Raises
where it raises, and Attributes for a dataclass's fields.

Read from the sources (ast); Keras callback hooks (on_*) and Keras Tuner's
run_trial, which override a library's documented method, are exempt.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
OVERRIDES = ("run_trial",)


def _own_nodes(function: ast.AST):
    """The nodes of a function's body, not those of functions or classes
    defined inside it."""
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                 ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


def _parameters(function: ast.FunctionDef) -> list[str]:
    args = function.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return [n for n in names if n not in ("self", "cls")]


def _decorators(function: ast.FunctionDef) -> set[str]:
    return {ast.unparse(d).split("(")[0].split(".")[-1] for d in function.decorator_list}


def function_problems(function: ast.FunctionDef, where: str) -> list[str]:
    """What the function's docstring lacks."""
    doc = ast.get_docstring(function)
    if not doc:
        return [f"{where}: no docstring"]
    if "property" in _decorators(function):
        return []
    problems = []
    if _parameters(function) and "Args:" not in doc:
        problems.append(f"{where}: no Args section")
    own = list(_own_nodes(function))
    if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in own):
        if "Yields:" not in doc:
            problems.append(f"{where}: no Yields section")
    elif any(isinstance(n, ast.Return) and n.value is not None
             and not (isinstance(n.value, ast.Constant) and n.value.value is None)
             for n in own) and "Returns:" not in doc:
        problems.append(f"{where}: no Returns section")
    if any(isinstance(n, ast.Raise) and n.exc is not None for n in own) \
            and "Raises:" not in doc:
        problems.append(f"{where}: no Raises section")
    return problems


def _is_dataclass(cls: ast.ClassDef) -> bool:
    return "dataclass" in _decorators(cls)  # type: ignore[arg-type]


def class_problems(cls: ast.ClassDef, where: str) -> list[str]:
    """What the class's docstring and its public methods' lack."""
    doc = ast.get_docstring(cls)
    if not doc:
        return [f"{where}: no docstring"]
    problems = []
    fields = [n for n in cls.body if isinstance(n, ast.AnnAssign)]
    if _is_dataclass(cls) and fields and "Attributes:" not in doc:
        problems.append(f"{where}: a dataclass without an Attributes section")
    for node in cls.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        name = node.name
        if name == "__init__":
            init_doc = ast.get_docstring(node) or ""
            if _parameters(node) and "Args:" not in doc and "Args:" not in init_doc:
                problems.append(f"{where}.__init__: no Args section (class or __init__)")
            continue
        if name.startswith("_") and name != "__call__" or name.startswith("on_") \
                or name in OVERRIDES:
            continue
        problems += function_problems(node, f"{where}.{name}")
    return problems


def module_problems(path: pathlib.Path) -> list[str]:
    """Everything public in one module that lacks its documentation."""
    tree = ast.parse(path.read_text())
    where = str(path.relative_to(ROOT))
    problems = [] if ast.get_docstring(tree) else [f"{where}: no module docstring"]
    for node in tree.body:
        if getattr(node, "name", "_").startswith("_"):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            problems += function_problems(node, f"{where}:{node.name}")
        elif isinstance(node, ast.ClassDef):
            problems += class_problems(node, f"{where}:{node.name}")
    return problems


def test_every_public_name_of_common_is_documented():
    problems = [p for path in sorted((ROOT / "common").rglob("*.py"))
                for p in module_problems(path)]
    assert not problems, f"{len(problems)} gaps:\n" + "\n".join(problems)


def test_the_check_finds_each_gap():
    source = '''"""A probe."""


def silent(x):
    return x


def documented(x):
    """Doubles.

    Args:
        x: a number.
    """
    if x is None:
        raise ValueError("no x")
    return 2 * x


class Plain:
    pass
'''
    tree = ast.parse(source)
    problems = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            problems += function_problems(node, node.name)
        elif isinstance(node, ast.ClassDef):
            problems += class_problems(node, node.name)
    assert problems == ["silent: no docstring", "documented: no Returns section",
                        "documented: no Raises section", "Plain: no docstring"]
