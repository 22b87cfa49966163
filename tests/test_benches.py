"""Every `make bench` target runs, at a tiny size, so a bench cannot rot unnoticed (tier `bench`, in `make check`).

Each runs as a user runs it (`python -m bench <name>`), in a scratch folder, its table saved there, not over the
measured tables in bench/results. Sizes too small to mean anything: only that it runs to its table.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = 3000  # raw rows
BENCHES = re.findall(r'^ +"([a-z-]+)": \w+\.main,$', (ROOT / "bench" / "__main__.py").read_text(), re.MULTILINE)


@pytest.mark.bench
@pytest.mark.parametrize("name", BENCHES)
def test_the_bench_runs_to_its_table(name, tmp_path):
    command = [sys.executable, "-m", "bench", name, "--sizes", str(TINY)]
    command += ["--workdir", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    command += ["--logs", "generated"] if name == "ceiling" else []  # the real logs' cases take minutes each
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "results" / f"{name}.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("|") and not line.startswith("|--")]
    assert len(rows) >= 2, table  # a heading and at least one measured row
