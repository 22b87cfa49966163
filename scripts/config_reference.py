"""The configuration reference (every setting, its type and default) as a Markdown table in docs/configuration.md.

`python scripts/config_reference.py --write` refreshes the table; `--check` fails when it is stale (`make docs`,
tests/test_readme.py).
"""

import re
import sys
from pathlib import Path

from behavior_spark.config import describe

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BLOCK = re.compile(r"(<!-- config-reference:.*?-->\n)(.*?)(\n<!-- end config-reference -->)", re.S)


def reference_table() -> str:
    lines = ["| setting | type | default |", "|---|---|---|"]
    lines += [f"| `{key}` | {kind} | `{default}` |" for key, kind, default in describe()]
    return "\n".join(lines)


def page_table() -> str:
    found = BLOCK.search(PAGE.read_text())
    return found.group(2) if found else ""


if __name__ == "__main__":
    if "--write" in sys.argv:
        PAGE.write_text(BLOCK.sub(lambda m: m.group(1) + reference_table() + m.group(3), PAGE.read_text()))
    elif "--check" in sys.argv:
        if page_table() != reference_table():
            sys.exit(f"{PAGE} is stale: run `.venv/bin/python scripts/config_reference.py --write`")
    else:
        print(reference_table())
