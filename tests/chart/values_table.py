"""The values table of charts/cluster-init/README.md, generated from values.yaml (helm-docs style).

A key preceded by a `# -- description` comment (continued on the following `#` lines) gets a row
with its type and default; `# @default -- text` replaces the default shown (for computed ones).
Comment lines above the `# --` line are notes for readers of values.yaml, not part of the table.
A key with a row may have children with rows of their own (probes.readiness.httpGet).

Regenerate the README's table, from the repository root:

    target/chart-venv/bin/python tests/chart/values_table.py

`--check` only says whether the table is current (exit status 1 when it is not). The chart tests
(test_chart.py) fail when it is out of date.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from dataclasses import dataclass
from typing import Any

import yaml

CHART_DIR = pathlib.Path(__file__).resolve().parents[2] / "charts" / "cluster-init"
BEGIN = "<!-- values table: generated from values.yaml by tests/chart/values_table.py; do not edit -->"
END = "<!-- end of the values table -->"
COMMAND = "target/chart-venv/bin/python tests/chart/values_table.py"


@dataclass
class Row:
    key: str
    type: str
    default: str
    description: str


def type_name(value: Any) -> str:
    # bool before int: True is an int in Python.
    for kind, name in [(bool, "bool"), (int, "int"), (float, "float"), (str, "string"), (list, "list"),
                       (dict, "object")]:
        if isinstance(value, kind):
            return name
    return "null"


def comment_above(lines: list[str], line: int) -> tuple[str, str | None] | None:
    """The `# --` description right above line `line` (0-based) and its `@default`, if any."""
    block = []
    i = line - 1
    while i >= 0 and lines[i].strip().startswith("#"):
        block.insert(0, lines[i].strip())
        i -= 1
    starts = [n for n, text in enumerate(block) if text.startswith("# --")]
    if not starts:
        return None
    words, default = [], None
    for text in block[starts[-1]:]:
        if text.startswith("# @default --"):
            default = text.removeprefix("# @default --").strip()
        elif text.startswith("# --"):
            words.append(text.removeprefix("# --").strip())
        else:
            words.append(text.removeprefix("#").strip())
    return " ".join(w for w in words if w), default


def rows(values_file: pathlib.Path = CHART_DIR / "values.yaml") -> list[Row]:
    text = values_file.read_text()
    lines = text.splitlines()
    values = yaml.safe_load(text)
    found: list[Row] = []

    def walk(node: yaml.MappingNode, path: list[str]) -> None:
        for key_node, value_node in node.value:
            key = path + [key_node.value]
            doc = comment_above(lines, key_node.start_mark.line)
            if doc:
                description, default = doc
                value = values
                for part in key:
                    value = value[part]
                shown = default if default is not None else f"`{json.dumps(value, separators=(',', ':'))}`"
                found.append(Row(".".join(key), type_name(value), shown, description))
            if isinstance(value_node, yaml.MappingNode):
                walk(value_node, key)

    walk(yaml.compose(text), [])
    return found


def uncovered(values_file: pathlib.Path = CHART_DIR / "values.yaml") -> list[str]:
    """Leaf keys of values.yaml with no row for them or for a parent: undocumented values."""
    documented = {r.key for r in rows(values_file)}
    missing = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = prefix + k
            if any(key == d or key.startswith(d + ".") for d in documented):
                if isinstance(v, dict):
                    walk(v, key + ".")
                continue
            if isinstance(v, dict) and v:
                walk(v, key + ".")
            else:
                missing.append(key)

    walk(yaml.safe_load(values_file.read_text()), "")
    return missing


def cell(text: str) -> str:
    # `-> CLUSTER_INIT_X` in values.yaml names the variable a value becomes.
    return re.sub(r"-> ([A-Z_]+(=\S+)?)", r"→ `\1`", text.replace("|", "\\|"))


def table(found: list[Row]) -> str:
    out = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    out += [f"| `{r.key}` | {r.type} | {cell(r.default)} | {cell(r.description)} |" for r in found]
    return "\n".join(out)


def with_table(readme: str, generated: str) -> str:
    """The README text with its table between the markers replaced by `generated`."""
    head, sep, rest = readme.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"README.md has no {BEGIN!r} ... {END!r} markers")
    return f"{head}{BEGIN}\n{generated}\n{END}{tail}"


def main(argv: list[str]) -> int:
    readme_file = CHART_DIR / "README.md"
    readme = readme_file.read_text()
    updated = with_table(readme, table(rows()))
    if "--check" in argv:
        current = updated == readme
        print("the values table is current" if current else f"the values table is out of date: run {COMMAND}")
        return 0 if current else 1
    readme_file.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
