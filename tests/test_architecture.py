"""The code's shape: one-way dependencies between hip's packages, task types only in hip.task."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HIP = Path(__file__).resolve().parents[1] / "hip"


def _unit(module: str) -> str:
    """`hip.train.trainer` -> `hip.train`; `hip.tracking` -> `hip.tracking`."""
    return ".".join(module.split(".")[:2])


def _imports() -> dict[str, set[str]]:
    """For each hip unit (subpackage or top-level module), the other hip units it imports."""
    edges: dict[str, set[str]] = {}
    for path in HIP.rglob("*.py"):
        parts = path.relative_to(HIP.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = (
                    ".".join(base + ([node.module] if node.module else []))
                    if node.level
                    else node.module or ""
                )
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("hip.") and _unit(name) != _unit(module):
                    if (HIP.parent / name.replace(".", "/")).with_suffix(".py").exists() or (
                        HIP.parent / name.replace(".", "/") / "__init__.py"
                    ).exists():
                        edges.setdefault(_unit(module), set()).add(_unit(name))
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_hips_packages():
    edges = _imports()
    assert edges["hip.train"] >= {"hip.task", "hip.data", "hip.checkpoint"}  # the walk works
    cycle = _cycle(edges)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_evaluation_and_training_share_nothing_from_hip_train():
    assert "hip.train" not in _imports().get("hip.evaluate", set())


def test_hip_imports_no_prefect():
    for path in HIP.rglob("*.py"):
        assert not re.search(r"^\s*(from|import) prefect", path.read_text(), re.M), path


# Label *formats* in the shard writer and loader (`K.cls`, `K.labels.json`, `K.mask.png`) are
# the data's, read from its manifest; everything about training and scoring is the task's.
LABEL_FORMAT_CODE = {"data/shards.py", "data/sources.py"}


def test_no_task_type_tests_outside_the_task_classes():
    from hip.task import task_names

    names = "|".join(task_names())
    compare = re.compile(rf"""(==|!=)\\s*["']({names})["']|["']({names})["']\\s*(==|!=)""")
    found = []
    for path in HIP.rglob("*.py"):
        rel = str(path.relative_to(HIP))
        if rel.startswith("task/") or rel in LABEL_FORMAT_CODE:
            continue
        found += [f"{rel}: {m.group(0)}" for m in compare.finditer(path.read_text())]
    assert found == []
