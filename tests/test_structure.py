"""The package's layers: each subpackage imports only those below it, and no module imports
itself back through others (every import counts, module-level or inside a function)."""

import ast
import os

import gpt2_tf

PACKAGE = os.path.dirname(gpt2_tf.__file__)
# Low to high. The package root (`gpt2_tf/__init__.py`) is the public API above them all.
LAYERS = ("core", "tokenizer", "model", "data", "evaluation", "train", "serve", "analyses", "cli")


def module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))[: -len(".py")].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def package_imports() -> dict[str, set[str]]:
    """{module: the gpt2_tf modules it imports}, from the source, every import statement."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                modules[module_name(path)] = path
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("gpt2_tf"))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpt2_tf"):
                for a in node.names:  # `from gpt2_tf.x import y`: y may be a module of x
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in modules else node.module)
        graph[module] = {m for m in found if m != module}
    return graph


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root


def test_lower_layers_never_import_higher_ones():
    graph = package_imports()
    wrong = [
        f"{m} ({layer(m)}) imports {d} ({layer(d)})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if layer(m) and layer(d) and LAYERS.index(layer(d)) > LAYERS.index(layer(m))
    ]
    assert not wrong, "\n".join(wrong)
    assert {layer(m) for m in graph} - {None} == set(LAYERS), "a subpackage outside LAYERS"


def test_no_import_cycles():
    graph = package_imports()
    # The root re-exports the public API; `from gpt2_tf import __version__` is not a dependency.
    graph = {m: {d for d in deps if d != "gpt2_tf"} for m, deps in graph.items()}
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                cycles.append(" -> ".join(path[path.index(d) :] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_a_cycle_and_a_layer_breach(monkeypatch):
    """The two checks above fail on the kind of graph they guard against."""
    import pytest

    fake = {"gpt2_tf.core.a": {"gpt2_tf.model.b"}, "gpt2_tf.model.b": {"gpt2_tf.core.a"}}
    fake.update({f"gpt2_tf.{name}": set() for name in LAYERS})
    import tests.test_structure as me

    monkeypatch.setattr(me, "package_imports", lambda: fake)
    with pytest.raises(AssertionError, match="core.a .core. imports gpt2_tf.model.b"):
        me.test_lower_layers_never_import_higher_ones()
    with pytest.raises(AssertionError, match="gpt2_tf.core.a -> gpt2_tf.model.b -> gpt2_tf.core.a"):
        me.test_no_import_cycles()
