"""The library does not reach up into the jobs: no module under tria/ imports pipelines."""

from __future__ import annotations

import ast
from pathlib import Path

TRIA = Path(__file__).resolve().parents[2] / "tria"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_tria_module_imports_pipelines():
    offenders = {str(p.relative_to(TRIA.parent)): sorted(n for n in _imports(p) if n.split(".")[0] == "pipelines")
                 for p in sorted(TRIA.rglob("*.py"))}
    assert len(offenders) > 20, "the scan found the library's modules"
    assert {p: n for p, n in offenders.items() if n} == {}
