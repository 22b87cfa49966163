"""A Spark standalone cluster for the tests: a master and 1-core workers started from the venv's Spark on the loopback
interface, each a process of its own, stopped by the process ids it started (the end-to-end run and the worker-kill
test submit to one)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
from waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's Spark launchers: spark-class, spark-submit


class Cluster:
    """A standalone master and its workers, each started as its own process; `stop` kills exactly those trees."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port, self.ui_port = free_port(), free_port()
        self.url = f"spark://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(folder / "logs")}

    def start(self, workers: int) -> None:
        self._launch("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port",
                     str(self.port), "--webui-port", str(self.ui_port))  # fmt: skip
        for number in range(workers):
            self.add_worker(number)
        self.wait_for_workers(workers)

    def add_worker(self, number: int) -> subprocess.Popen:
        work = self.folder / f"worker-{number}"
        return self._launch(f"worker-{number}", "org.apache.spark.deploy.worker.Worker", self.url, "--host",
                            "127.0.0.1", "--cores", "1", "--memory", "2g", "--webui-port", "0", "--work-dir",
                            str(work))  # fmt: skip

    def _launch(self, name: str, main_class: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [str(BIN / "spark-class"), main_class, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as response:
            return json.load(response)

    def wait_for_workers(self, count: int, timeout: float = 120) -> None:
        def alive() -> bool:
            with contextlib.suppress(OSError):
                return self.state()["aliveworkers"] >= count
            return False

        wait_until(alive, timeout, f"the cluster did not start {count} workers: see {self.folder}/*.log")

    def stop(self) -> None:
        for process in reversed(self.processes):
            kill_tree(process.pid)
            process.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process it started (a worker's executor JVM and its Python workers)."""
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()


@contextlib.contextmanager
def standalone(folder: Path, workers: int = 2) -> Iterator[Cluster]:
    """A started cluster of `workers` 1-core workers, stopped on leaving the block whatever happened in it."""
    cluster = Cluster(folder)
    try:
        cluster.start(workers)
        yield cluster
    finally:
        cluster.stop()


def submit(master: str, job: str, conf: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start `jobs/<job>.py` through the venv's spark-submit, as a user does (the venv's launchers first on PATH)."""
    env = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [
        *(str(BIN / "spark-submit"), "--master", master),
        *("--conf", "spark.databricks.delta.snapshotPartitions=2"),  # as locally: Delta's 50 tasks suit big tables
        *(str(ROOT / "jobs" / f"{job}.py"), "--conf", str(conf)),
    ]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen, timeout: float = 1200) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err
