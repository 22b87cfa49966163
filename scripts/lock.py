"""Re-resolve the locks: requirements/lock.txt (runtime, what cluster nodes install) from requirements/base.txt, and
requirements/dev-lock.txt (dev and test tools) from requirements/dev.txt on top of it.

Each is pip's dry-run resolution for this Python (3.12) with the current locks as constraints, so a pin moves only
when base.txt or dev.txt asks for it. Run by `make lock`; needs the package registry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements"
HEADERS = {
    "lock.txt": (
        "# The runtime set for Python 3.12 on Linux x86_64, resolved by 'make lock' from requirements/base.txt: what\n"
        "# cluster nodes install. Horovod is not here: scripts/setup.sh builds it from source against this TensorFlow\n"
    ),
    "dev-lock.txt": (
        "# Development and test tools (requirements/dev.txt) resolved by 'make lock' on top of requirements/lock.txt:\n"
        "# what scripts/setup.sh adds on a developer's machine and CI, never on cluster nodes.\n"
    ),
}


def resolve(*requirement_files: str) -> dict[str, str]:
    """{name: version} that pip would install for these files, constrained by the current locks."""
    with tempfile.TemporaryDirectory() as scratch:
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text("".join((REQUIREMENTS / name).read_text() for name in HEADERS))
        report = Path(scratch) / "report.json"
        files = [arg for name in requirement_files for arg in ("-r", str(REQUIREMENTS / name))]
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--report",
             str(report), *files, "-c", str(constraints)],
            check=True,
        )  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in installs if i["metadata"]["name"] != "horovod"}


def write(name: str, pins: dict[str, str]) -> None:
    lines = (f"{package}=={version}\n" for package, version in sorted(pins.items(), key=lambda p: p[0].lower()))
    (REQUIREMENTS / name).write_text(HEADERS[name] + "".join(lines))


def main() -> None:
    runtime = resolve("base.txt")
    everything = resolve("base.txt", "dev.txt")
    write("lock.txt", runtime)
    write("dev-lock.txt", {name: version for name, version in everything.items() if name not in runtime})


if __name__ == "__main__":
    main()
