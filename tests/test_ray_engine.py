"""Issue 21: the Ray engine on a real local Ray cluster (a head from ``ray start --head`` and a second
node joined with ``ray start --address``, one CPU each, no GPU): the same shard bytes as the local
engine for the quickstart and for a tiny ControlNet + SAM recipe (the device actor with
``num_gpus=0``), and a run that loses the second node mid-shard still completes with the same bytes.

The cluster's processes are found by its own temporary folder and port and killed by PID at the
end (never ``ray stop``, which would stop every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from synthgen.recipe import load_recipe
from synthgen.run import generate
from tests.conftest import ROOT, small_recipe

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

RAY = str(Path(sys.executable).with_name("ray"))
SLOW_NODE_DELAY_S = "1.0"  # per sample on the second node: its shards are in flight long enough to kill


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(*names: str) -> list[str]:
    return [arg for name in names for arg in (f"--{name}", str(_free_port()))]


class LocalCluster:
    """A head and a second node on this machine, each with one CPU, in a temporary folder of their own."""

    def __init__(self):
        self.temp = tempfile.mkdtemp(prefix="sg-ray-", dir="/tmp")  # socket paths must stay short
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        self.env.pop("RAY_ADDRESS", None)
        self._start(["--head", "--port", str(self.port), "--include-dashboard=false",
                     *_ports("ray-client-server-port", "dashboard-port")])
        self.node2_port = _free_port()
        self._start(["--address", self.address, "--node-manager-port", str(self.node2_port)],
                    SYNTHGEN_TEST_SAMPLE_DELAY_S=SLOW_NODE_DELAY_S)

    def _start(self, args: list[str], **env) -> None:
        """``ray start`` with one CPU, this cluster's folder, and ports of its own (not Ray's fixed
        defaults, which other Ray clusters on the machine may hold)."""
        common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--temp-dir", self.temp,
                  "--disable-usage-stats", *_ports("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                   "runtime-env-agent-port", "metrics-export-port")]
        result = subprocess.run([RAY, "start", *args, *common], env=self.env | env, capture_output=True,
                                text=True, timeout=180)
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")

    def _processes(self) -> list:
        """Every process of this cluster: command lines naming its folder or port, and their children."""
        found = {}
        for proc in psutil.process_iter(["pid", "cmdline"]):
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
        _kill(self.node2_processes())

    def stop(self) -> None:
        _kill(self._processes())
        shutil.rmtree(self.temp, ignore_errors=True)


def _children(proc) -> list:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _kill(procs: list) -> None:
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.fixture(scope="module")
def cluster():
    cluster = LocalCluster()
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _quickstart(samples: int = 8):
    """The quickstart recipe, small: 96x96 images, shards of 2."""
    return load_recipe(ROOT / "recipes" / "quickstart.yaml",
                       [f"num_samples={samples}", "image.width=96", "image.height=96", "output.shard_size=2",
                        "render.backend=torch"])


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def quickstart_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    generate(_quickstart(), out, workers=1, progress=False)
    return _shard_bytes(out)


def test_quickstart_on_two_nodes_is_byte_identical_to_the_local_engine(cluster, quickstart_reference, tmp_path):
    from synthgen.report import run_status

    manifest = generate(_quickstart(), tmp_path / "ray", progress=False, engine="ray", ray_address=cluster.address)
    assert manifest["complete"] and manifest["num_samples_written"] == 8
    assert manifest["stats"]["engine"] == "ray"
    assert _shard_bytes(tmp_path / "ray") == quickstart_reference
    status = run_status(str(tmp_path / "ray"))  # status reads a Ray run as any other
    assert status["done"] == status["total"] == 8


def test_controlnet_and_sam_with_a_device_actor_are_byte_identical(cluster, tmp_path):
    pytest.importorskip("diffusers")
    from tests.tiny_diffusion import build_tiny_sd15
    from tests.tiny_sam import build_tiny_sam

    sd, sam = build_tiny_sd15(tmp_path / "sd15", num_controlnets=1), build_tiny_sam(tmp_path / "sam")
    backend = {"kind": "controlnet", "controlnet": {
        "family": "sd15", "base_model": str(sd["base"]), "steps": 2, "dtype": "fp32", "batch_size": 2,
        "device": "cpu", "local_files_only": True,
        "controlnets": [{"model": str(sd["controlnets"][0]), "layer": "normal", "scale": 1.0}]}}
    flt = {"sam": {"model": str(sam), "min_iou": 0.0, "min_keypoints_in_mask": 0.0}}
    recipe = small_recipe(num_samples=4, image={"width": 64, "height": 64}, backend=backend, filter=flt,
                          output={"shard_size": 2})
    generate(recipe, tmp_path / "local", workers=1, loader_workers=0, progress=False)
    manifest = generate(recipe, tmp_path / "ray", progress=False, engine="ray", ray_address=cluster.address)
    assert manifest["complete"] and manifest["num_samples_written"] == 4
    assert len(_shard_bytes(tmp_path / "ray")) == 2
    assert _shard_bytes(tmp_path / "ray") == _shard_bytes(tmp_path / "local")


def test_losing_the_second_node_mid_shard_still_completes_with_the_same_bytes(cluster, quickstart_reference,
                                                                               tmp_path):
    """The CLI drives the run; once the slow second node is writing a shard, all its processes are
    killed with SIGKILL: Ray runs that shard again on the head and the dataset is the same bytes."""
    out = tmp_path / "ray"
    run = subprocess.Popen([sys.executable, "-m", "synthgen", "generate", str(ROOT / "recipes" / "quickstart.yaml"),
                            "--out", str(out), "--num-samples", "8", "image.width=96", "image.height=96",
                            "output.shard_size=2", "render.backend=torch", "--engine", "ray", "--ray-address",
                            cluster.address, "--no-progress"],
                           cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300  # a bound on a hang, not a timing assertion
        while not _node2_is_writing(cluster, out):
            assert run.poll() is None, f"the run ended before the second node wrote a shard:\n{run.stdout.read()}"
            assert time.monotonic() < deadline, "the second node never started a shard"
            time.sleep(0.2)
        cluster.kill_node2()
        output, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output
    assert not cluster.node2_processes()
    assert _shard_bytes(out) == quickstart_reference
    assert not list((out / "shards").glob("*.partial-*"))


def _node2_is_writing(cluster: LocalCluster, out: Path) -> bool:
    """Whether a process of the second node holds a partial shard in ``out`` (``.partial-PID``)."""
    pids = {p.pid for p in cluster.node2_processes()}
    return any(int(p.name.rsplit("-", 1)[1]) in pids for p in (out / "shards").glob("*.tar.partial-*")
               if p.name.rsplit("-", 1)[1].isdigit())
