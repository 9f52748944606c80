"""``recipe/papo/`` holds only runtime code: every public name it defines is used by the runtime.

For each public module-level function, class and variable of ``recipe/papo`` (and each public method
and class attribute of its classes), the test looks for a use outside its own definition in the runtime:
``recipe/`` and ``data_prep/`` (a name or attribute in their code), or ``configs/`` and ``scripts/``
(the name in their text: Hydra ``_target_`` paths, ``pkg://`` functions, ``python -m`` modules).
Uses in ``tests/``, ``papo_tools/`` and ``benchmarks/`` do not count. Decorated functions count as
used (verl's registries call them by name), and so do dunder methods and dataclass ``__post_init__``.
The check is by name: a method or field counts as used when runtime code reads any attribute of that
name (``merge_size`` of another class too), and an argument value that only tests pass (such as the
former ``mask_batch(lazy=False)``) is out of its reach. Run as a script
(``python tests/core/test_runtime_package.py``) it prints what it finds.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIME_CODE = ("recipe", "data_prep")
RUNTIME_TEXT = ("configs", "scripts")

# Names that only tests or tooling read but that stay for now, each with its reason.
KNOWN: dict[str, str] = {
    # The hook recipe/papo/run_checks.py offers a device backend for its start-up checks (run before Ray);
    # the CPU backend (papo_tools.cpu) registers its one check through it. The recipe cannot import
    # papo_tools, so the registry stays here; run_backend_checks, its runtime half, runs in every run.
    "recipe/papo/backend_checks.py: register_backend_check": "the CPU backend's registration call",
}


def _definitions(path: Path) -> list[tuple[str, ast.AST]]:
    """``(qualified name, node)`` of the public module-level names of ``path`` (functions, classes,
    variables) and the public methods and class attributes of its classes (``Class.name``)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets if isinstance(node, (ast.Assign, ast.AnnAssign)) else []:
            if isinstance(target, ast.Name) and not target.id.startswith("_") and target.id != "logger":
                found.append((target.id, node))
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            found.append((node.name, node))
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                        found.append((f"{node.name}.{item.name}", item))
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        if not item.target.id.startswith("_"):
                            found.append((f"{node.name}.{item.target.id}", item))
    return found


def _used_names(path: Path, skip: set[int]) -> set[str]:
    """Names and attribute names referenced in ``path``'s code, except on the lines of nodes in ``skip``."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):  # read, not assigned
            used.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            used.add(node.attr)
        elif isinstance(node, ast.alias):
            used.add(node.name.split(".")[-1])
    return used


def unused_runtime_names() -> list[str]:
    """Public names of ``recipe/papo`` that no runtime code or config uses (sorted)."""
    text = "\n".join(
        path.read_text(errors="ignore")
        for folder in RUNTIME_TEXT
        for path in (REPO / folder).rglob("*")
        if path.is_file()
    )
    code_files = [path for folder in RUNTIME_CODE for path in (REPO / folder).rglob("*.py")]
    unused = []
    for path in sorted((REPO / "recipe" / "papo").rglob("*.py")):
        for name, node in _definitions(path):
            short = name.split(".")[-1]
            if getattr(node, "decorator_list", None) or short == "__post_init__":
                continue
            own_lines = {node.lineno}
            used = re.search(rf"\b{re.escape(short)}\b", text) is not None
            for other in code_files:
                if used:
                    break
                used = short in _used_names(other, own_lines if other == path else set())
            if not used:
                unused.append(f"{path.relative_to(REPO)}: {name}")
    return sorted(unused)


def test_recipe_papo_has_no_code_only_tests_or_tooling_use():
    unused = unused_runtime_names()
    assert [name for name in unused if name not in KNOWN] == [], "runtime package names with no runtime use"
    assert sorted(KNOWN) == [name for name in unused if name in KNOWN], "a KNOWN entry is used now: drop it"


if __name__ == "__main__":
    names = unused_runtime_names()
    print("\n".join(names) or "none")
    sys.exit(1 if names else 0)
