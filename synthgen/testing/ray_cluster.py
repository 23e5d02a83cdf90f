"""A real Ray cluster on this machine for tests and benchmarks (needs ray and psutil): a head
(``ray start --head``) and a second node (``ray start --address``), one CPU each, ports and a
temporary folder of their own.

:meth:`LocalCluster.stop` kills the cluster's own processes by PID (found by its folder and port),
never ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]  # the folder holding this synthgen: the workers import it

RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free now (all held open at once, so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class LocalCluster:
    """A head and a second node on this machine, each with one CPU, in a temporary folder of their own;
    ``node2_delay_s``: each sample made on the second node sleeps that much longer (keeps its shards
    in flight); ``node2_cpu_s``: each costs that many more CPU seconds there (a slower node).

    ``pin``: two machines, not one shared pair of cores. The head takes no work (``--num-cpus 0``, as
    Ray advises for a head that schedules a busy cluster) and floats; two worker nodes of one CPU
    each are pinned to core 0 and core 1 (taskset), so the slowed node cannot lend its core."""

    def __init__(self, node2_delay_s: float = 0.0, node2_cpu_s: float = 0.0, pin: bool = False):
        self.temp = tempfile.mkdtemp(prefix="sg-ray-", dir="/tmp")  # socket paths must stay short
        self._free = iter(_free_ports(24))  # every port this cluster names, distinct
        self.port = next(self._free)
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        self.env.pop("RAY_ADDRESS", None)
        self._start(["--head", "--port", str(self.port), "--include-dashboard=false",
                     *self._ports("ray-client-server-port", "dashboard-port")], cpus=0 if pin else 1)
        if pin:
            self._start(["--address", self.address, "--node-manager-port", str(next(self._free))], core=0)
        self.node2_port = next(self._free)
        self._start(["--address", self.address, "--node-manager-port", str(self.node2_port)],
                    core=1 if pin else None, SYNTHGEN_TEST_SAMPLE_DELAY_S=str(node2_delay_s),
                    SYNTHGEN_TEST_SAMPLE_CPU_S=str(node2_cpu_s))

    def _ports(self, *names: str) -> list[str]:
        return [arg for name in names for arg in (f"--{name}", str(next(self._free)))]

    def _start(self, args: list[str], cpus: int = 1, core: int | None = None, **env) -> None:
        """``ray start`` with ``cpus`` CPUs (pinned to ``core`` if given), this cluster's folder, and
        ports of its own (not Ray's fixed defaults, which other Ray clusters on the machine may hold)."""
        common = ["--num-cpus", str(cpus), "--node-ip-address", "127.0.0.1", "--temp-dir", self.temp,
                  "--disable-usage-stats", *self._ports("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                        "runtime-env-agent-port", "metrics-export-port")]
        pinned = ["taskset", "-c", str(core)] if core is not None else []
        result = subprocess.run([*pinned, RAY, "start", *args, *common], env=self.env | env, capture_output=True,
                                text=True, timeout=180)
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")

    def processes(self) -> list:
        """Every process of this cluster: command lines naming its folder or port, and their children."""
        found = {}
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if self.temp in line or f":{self.port}" in line:
                found[proc.pid] = proc
        for proc in list(found.values()):
            for child in _children(proc):
                found[child.pid] = child
        return list(found.values())

    def node2_processes(self) -> list:
        """The second node's raylet and everything it started (its workers, its agents)."""
        for proc in psutil.process_iter(["pid", "cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if "raylet" in line and f"--node_manager_port={self.node2_port}" in line:
                return [proc, *_children(proc)]
        return []

    def kill_node2(self) -> None:
        kill_processes(self.node2_processes())

    def stop(self) -> None:
        kill_processes(self.processes())
        shutil.rmtree(self.temp, ignore_errors=True)


def _children(proc) -> list:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def kill_processes(procs: list) -> None:
    """SIGKILL ``procs`` (psutil processes) and wait up to 10 s for them."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
