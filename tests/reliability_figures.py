"""Turn the reliability suite's ``RELIABILITY`` lines into the Markdown tables of docs/reliability.md.

Usage::

    python3 -m pytest -p no:cacheprovider -s -q tests/test_reliability_*.py | python3 tests/reliability_figures.py

Each test prints one line ``RELIABILITY NAME: key=value ...`` (values in
brackets may hold spaces); this groups them by NAME, one table each, in the
order they first appear.
"""

from __future__ import annotations

import re
import sys

LINE = re.compile(r"RELIABILITY (?P<name>[\w-]+): (?P<rest>.*)$")
FIELD = re.compile(r"(\w+)=(\[[^\]]*\]|\S+)")


def parse(lines: list[str]) -> dict[str, list[dict[str, str]]]:
    """``{name: [row, ...]}`` from the RELIABILITY lines among *lines*."""
    tables: dict[str, list[dict[str, str]]] = {}
    for line in lines:
        match = LINE.search(line)
        if match:
            row = {key: value.strip("[]") for key, value in FIELD.findall(match["rest"])}
            tables.setdefault(match["name"], []).append(row)
    return tables


def markdown(tables: dict[str, list[dict[str, str]]]) -> str:
    """One Markdown table per name; columns are the union of the rows' keys, in first-seen order."""
    out = []
    for name, rows in tables.items():
        columns: list[str] = []
        for row in rows:
            columns += [key for key in row if key not in columns]
        out.append(f"**{name}**\n")
        out.append("| " + " | ".join(columns) + " |")
        out.append("|" + "---|" * len(columns))
        for row in rows:
            out.append("| " + " | ".join(row.get(column, "") for column in columns) + " |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(parse(sys.stdin.read().splitlines())))
