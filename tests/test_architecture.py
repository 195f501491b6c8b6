"""The layout rules of ``src/ccfv``, read from the source with ``ast``.

* The import graph has no cycle. Every import counts: ``import x``, ``from x import y`` (an
  edge to ``x.y`` when that is a module, else to ``x``), relative imports, and imports inside
  functions (lazy imports still tie the modules together).
* No module outside a bank kind's own file names a kind: every dispatch on the kind goes
  through the registry :mod:`ccfv.bank.kinds` (issue 15, item 1).
"""

import ast
from pathlib import Path

import pytest

import ccfv
from ccfv.bank.kinds import KINDS

SRC = Path(ccfv.__file__).resolve().parent
ROOT = SRC.parent

#: Import edges of cycles that other parts of issue 15 remove, ignored until then.
KNOWN_CYCLE_EDGES: dict[tuple[str, str], str] = {}

#: Places outside a kind's own file that name a kind key, each with its reason:
#: (module, the key) -> why.
KIND_NAME_EXCEPTIONS: dict[tuple[str, str], str] = {
    # ``nnunet`` is also a dataset layout (nnU-Net's raw-data folders), not the bank kind
    ("ccfv.data.layouts", "nnunet"): "dataset layout name",
    # clients of the bank file format: they write bank entries of the kind ``network``
    ("ccfv.bench.networks", "network"): "writes the bench's bank entries",
    ("ccfv.demo.bank", "network"): "writes the demo bank",
    # the English word: a checkpoint dict key, the noun of "module m of network x" messages
    ("ccfv.bank.checkpoint", "network"): "checkpoint dict key 'network'",
    ("ccfv.bank.callables", "network"): "default noun in messages",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def import_edges(name: str, path: Path, known: set[str]) -> set[str]:
    """The ccfv modules that module ``name`` (file ``path``) imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # import a.b.c of a module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: import_edges(name, path, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_finds_cycles_and_lazy_imports(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    code = "def f():\n    from ccfv.bank import kinds\n    import ccfv.errors\n"
    path = tmp_path / "m.py"
    path.write_text(code)
    known = {"ccfv.bank", "ccfv.bank.kinds", "ccfv.errors", "ccfv.x"}
    assert import_edges("ccfv.x", path, known) == {"ccfv.bank.kinds", "ccfv.errors"}


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "ccfv.bank.kinds.bundle" in graph["ccfv.bank.kinds"]
    for (a, b), why in KNOWN_CYCLE_EDGES.items():
        assert b in graph.get(a, set()), (
            f"the import {a} -> {b} ({why}) is gone: remove it from KNOWN_CYCLE_EDGES"
        )
        graph[a] = graph[a] - {b}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def kind_modules() -> dict[str, str]:
    """kind key -> the module that defines the kind."""
    return {key: type(kind).__module__ for key, kind in KINDS.items()}


def kind_mentions(path: Path, keys: set[str], kind_mods: set[str]) -> list[tuple[int, str]]:
    """``(line, what)`` of every place in the file that names a kind: a string equal to a kind
    key (``"bundle"``), an attribute named like one (``entry.bundle``), an import of a kind's
    module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys:
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.Attribute) and node.attr in keys:
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.ImportFrom) and node.module in kind_mods:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name in kind_mods]
    return found


def test_no_module_outside_a_kind_names_a_kind():
    keys = set(KINDS)
    own = kind_modules()
    kind_mods = set(own.values())
    allowed = {
        # the registry: one line per kind
        "ccfv.bank.kinds": {*keys, *kind_mods},
        # the public name ccfv.bank.TorchScriptModel, exported before the kinds existed
        "ccfv.bank": {"ccfv.bank.kinds.torchscript"},
    }
    problems, used = [], set()
    for name, path in modules().items():
        for line, what in kind_mentions(path, keys, kind_mods):
            key = next((k for k, m in own.items() if m == what), what)
            if own.get(key) == name or what in allowed.get(name, set()):
                continue
            if (name, key) in KIND_NAME_EXCEPTIONS:
                used.add((name, key))
                continue
            problems.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not problems, "kind named outside its kind module:\n" + "\n".join(problems)
    assert used == set(KIND_NAME_EXCEPTIONS), (
        f"exceptions no longer needed, remove them: {set(KIND_NAME_EXCEPTIONS) - used}"
    )


def test_kind_mentions_are_found(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        'if entry.kind == "bundle" or entry.nnunet:\n'
        "    from ccfv.bank.kinds.bundle import Bundle\n"
        'text = "a bundle folder"\n'
    )
    found = kind_mentions(path, {"bundle", "nnunet"}, {"ccfv.bank.kinds.bundle"})
    assert sorted(found) == [(1, "bundle"), (1, "nnunet"), (2, "ccfv.bank.kinds.bundle")]


@pytest.mark.parametrize("key", sorted(KINDS))
def test_every_kind_lives_in_its_own_module(key):
    module = kind_modules()[key]
    assert module.startswith("ccfv.bank.kinds.")
    assert sum(1 for m in kind_modules().values() if m == module) == 1
