"""Every deploy target's Python environment, resolved against the package registry for that target's Python and
platform, so that a pin with no wheel fails here rather than when a cluster starts.

Each target installs exactly the files named below (the Databricks init script and wheel, the EMR bootstrap's
`scripts/setup.sh`); pip resolves them in a dry run for CPython 3.12 on the target's manylinux level (its glibc), wheels
only. What a node has without resolving a wheel is given to pip as a stand-in wheel: the runtime's own PySpark on
Databricks, and on EMR PySpark 4.0.1 built from its source release, as `scripts/setup.sh` builds it here. Horovod is
built from source on GPU nodes, with the same recipe and version that set-up built and checked on this machine.
Needs the registry (PyPI), as set-up does.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
DEV_LOCK = ROOT / "requirements" / "dev-lock.txt"
DEV_TOOLS = {
    "pytest",
    "pytest-timeout",
    "hypothesis",
    "ruff",
    "mypy",
    "mkdocs",
    "nbclient",
    "ipykernel",
    "databricks-bundles",
}
DATABRICKS_INIT = ROOT / "deploy" / "databricks" / "init"


@dataclasses.dataclass(frozen=True)
class NodeEnvironment:
    """What one kind of node installs with pip, for which interpreter and platform."""

    python: str
    glibc_minor: int  # the node's glibc 2.N: wheels tagged manylinux_2_17 .. manylinux_2_N install
    requirements: tuple[str, ...]  # pip arguments: requirement files and specifiers
    provided: tuple[tuple[str, str], ...]  # (name, version) the node has without a wheel from the registry


def wheel_dependencies() -> tuple[str, ...]:
    """The behavior-spark wheel's own requirements (what Databricks installs with the wheel library)."""
    return tuple(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


TARGETS = {
    # Databricks Runtime 17.3 LTS (Ubuntu 24.04, glibc 2.39, Python 3.12, Spark 4.0.0): the CPU tasks install the wheel.
    "databricks-cpu": NodeEnvironment("3.12", 39, wheel_dependencies(), (("pyspark", "4.0.0"),)),
    # Databricks Runtime 17.3 LTS ML GPU: init/horovod.sh's requirements under the lock without PySpark, then the wheel.
    "databricks-gpu": NodeEnvironment(
        "3.12",
        39,
        ("-r", str(DATABRICKS_INIT / "requirements.txt"), "-c", "{lock without pyspark}", *wheel_dependencies()),
        (("pyspark", "4.0.0"),),
    ),
    # EMR 7.12 (Amazon Linux 2023, glibc 2.34, python3.12 from dnf): bootstrap.sh runs scripts/setup.sh.
    "emr-cpu": NodeEnvironment("3.12", 34, ("-r", str(LOCK)), (("pyspark", "4.0.1"),)),
    "emr-gpu": NodeEnvironment(
        "3.12",
        34,
        ("-r", str(LOCK), "-r", str(ROOT / "requirements" / "gpu.txt"), "-c", str(LOCK)),
        (("pyspark", "4.0.1"),),
    ),
    # A developer's machine and CI (Debian 12, glibc 2.36): the runtime lock and the dev tools' lock, as set-up.
    "dev": NodeEnvironment(
        "3.12", 36, ("-r", str(LOCK), "-r", str(DEV_LOCK), "-c", str(LOCK)), (("pyspark", "4.0.1"),)
    ),
}


def locked_versions(*locks: Path) -> dict[str, str]:
    lines = [line for lock in (locks or (LOCK,)) for line in lock.read_text().splitlines()]
    pins = (line.split("==") for line in lines if "==" in line and not line.startswith("#"))
    return {normalise(name): version for name, version in pins}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stand_in_wheel(folder: Path, name: str, version: str) -> None:
    """An empty wheel named `name` `version`, standing for a package the node already has."""
    dist_info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{dist_info}/RECORD", "")


def resolve(target: NodeEnvironment, scratch: Path) -> dict[str, str]:
    """pip's dry-run resolution of the target's requirements for its Python and platform: {name: version}."""
    stand_ins = scratch / "provided"
    stand_ins.mkdir()
    for name, version in target.provided:
        stand_in_wheel(stand_ins, name, version)
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(17, target.glibc_minor + 1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    without_pyspark = scratch / "constraints.txt"  # what init/horovod.sh makes of the lock with grep
    without_pyspark.write_text(
        "".join(line for line in LOCK.read_text().splitlines(True) if not line.startswith("pyspark=="))
    )
    requirements = [str(without_pyspark) if r == "{lock without pyspark}" else r for r in target.requirements]
    report = scratch / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--report", str(report), "--only-binary=:all:", "--python-version", target.python,
        "--implementation", "cp", "--abi", f"cp{target.python.replace('.', '')}",
        *(arg for platform in platforms for arg in ("--platform", platform)),
        "--target", str(scratch / "target"), "--find-links", str(stand_ins), *requirements,
        *(f"{name}=={version}" for name, version in target.provided),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"pip could not resolve the environment:\n{done.stderr[-3000:]}"
    installs = json.loads(report.read_text())["install"]
    return {normalise(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


@pytest.mark.network
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_each_deploy_environment_resolves_to_wheels_for_its_python(name, tmp_path):
    target = TARGETS[name]
    resolved = resolve(target, tmp_path)
    lock = locked_versions(LOCK, DEV_LOCK) if name == "dev" else locked_versions()
    provided = {normalise(package) for package, _ in target.provided}
    differing = {p: (v, lock[p]) for p, v in resolved.items() if p in lock and p not in provided and v != lock[p]}
    if name != "databricks-cpu":  # the wheel alone names ranges; every other target is held to the lock
        assert differing == {}, f"{name} would install versions other than the lock's: {differing}"
    assert resolved["petastorm"] == lock["petastorm"] and resolved["pyarrow"] == lock["pyarrow"]
    if name.endswith("gpu"):
        assert resolved["tensorflow"] == lock["tensorflow"] and resolved["tf-keras"] == lock["tf-keras"]
        assert any(p.startswith("nvidia-cudnn") for p in resolved), "the CUDA build of TensorFlow is not installed"


def test_cluster_nodes_install_no_dev_or_test_tool():
    runtime, dev = locked_versions(LOCK), locked_versions(DEV_LOCK)
    assert not DEV_TOOLS & runtime.keys(), "a dev tool in the runtime lock that cluster nodes install"
    assert DEV_TOOLS <= dev.keys() and not runtime.keys() & dev.keys()  # each pin in one lock
    assert "--node" in (ROOT / "deploy" / "emr" / "bootstrap.sh").read_text()  # nodes skip the dev lock


def test_gpu_nodes_build_the_horovod_that_setup_built_here():
    import horovod

    built_here = horovod.__version__
    for script in (DATABRICKS_INIT / "horovod.sh", ROOT / "scripts" / "setup.sh"):
        text = script.read_text()
        assert "HOROVOD_WITH_TENSORFLOW=1" in text and "--no-build-isolation" in text
        assert re.search(
            rf"horovod(==|_VERSION=){re.escape(built_here)}\b", text, re.IGNORECASE
        ), f"{script.name} builds another Horovod"
    assert "grep -v '^pyspark=='" in (DATABRICKS_INIT / "horovod.sh").read_text()  # as `resolve` makes its constraints


@pytest.mark.network
def test_a_pin_without_a_wheel_for_the_target_python_fails_the_resolution(tmp_path):
    old_stack = NodeEnvironment("3.12", 39, ("tensorflow==2.15.1",), ())  # the pin that broke the Databricks target
    with pytest.raises(AssertionError, match="could not resolve"):
        resolve(old_stack, tmp_path)
