"""The README's "Layout" tree is the tree: every package folder it names exists, and every package folder
of the project is named there (with its parent)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("monitor", "rules", "adapters", "lab", "tests", "bench", "config")


def _readme_tree() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout", 1)[1]
    block = section.split("```", 2)[1]
    folders: set[str] = set()
    parents: list[str] = []
    for line in block.splitlines():
        m = re.match(r"^( *)([A-Za-z0-9_]+)/ ", line + " ")
        if not m:
            continue
        depth = len(m.group(1)) // 2
        parents[depth:] = [m.group(2)]
        folders.add("/".join(parents))
    return folders


def _packages() -> set[str]:
    found = {t for t in TOP if (ROOT / t).is_dir()}
    for top in ("monitor", "adapters", "lab", "tests"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                found.add(rel)
    return found


def test_the_readme_layout_names_every_package_and_only_existing_ones() -> None:
    named, actual = _readme_tree(), _packages()
    assert named - actual == set(), "the README names folders that do not exist"
    assert actual - named == set(), "packages missing from the README's Layout"
