"""The configuration reference (every setting, its type and default) as a Markdown table.

`python scripts/config_reference.py --write` refreshes the table in README.md; tests/test_readme.py checks it.
"""

import re
import sys
from pathlib import Path

from behavior_spark.config import describe

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- config-reference:.*?-->\n)(.*?)(\n<!-- end config-reference -->)", re.S)


def reference_table() -> str:
    lines = ["| setting | type | default |", "|---|---|---|"]
    lines += [f"| `{key}` | {kind} | `{default}` |" for key, kind, default in describe()]
    return "\n".join(lines)


def readme_table() -> str:
    return BLOCK.search(README.read_text()).group(2)


if __name__ == "__main__":
    if "--write" in sys.argv:
        README.write_text(BLOCK.sub(lambda m: m.group(1) + reference_table() + m.group(3), README.read_text()))
    else:
        print(reference_table())
