"""Print the configuration reference (every setting, its type and default) as a Markdown table for the README."""

from behavior_spark.config import describe


def reference_table() -> str:
    lines = ["| setting | type | default |", "|---|---|---|"]
    lines += [f"| `{key}` | {kind} | `{default}` |" for key, kind, default in describe()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_table())
