"""The Ray engine on a real local Ray cluster (a head from ``ray start --head`` and a second
node joined with ``ray start --address``, one CPU each, no GPU): the same shard bytes as the local
engine for the quickstart and for a tiny ControlNet + SAM recipe (the device actor with
``num_gpus=0``), and a run that loses the second node mid-shard still completes with the same bytes.

The cluster (:mod:`synthgen.testing.ray_cluster`) is stopped by killing its own processes by PID, never with
``ray stop``, which would stop every Ray on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from synthgen.recipe import load_recipe
from synthgen.run import generate
from tests.fixtures.recipes import ROOT, small_recipe

SLOW_NODE_DELAY_S = 1.0  # per sample on the second node: its shards are in flight long enough to kill

def test_the_ray_engine_refuses_a_task_split_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "synthgen", "generate", str(ROOT / "recipes" / "quickstart.yaml"),
                             "--out", str(tmp_path / "out"), "--engine", "ray", "--task", "0/2"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "--engine ray" in result.stderr and "drop --task" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server (None without moto / s3fs); its variables are in every node's environment
    (as on a cluster whose pods carry AWS_*), set before the cluster starts."""
    import importlib.util

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("s3fs") is None:
        yield None
        return
    from tests.fixtures.s3_server import S3Endpoint

    endpoint = S3Endpoint()
    try:
        yield endpoint
    finally:
        endpoint.stop()


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    import ray

    from synthgen.testing.ray_cluster import LocalCluster

    names = ("RAY_AUTH_MODE", "RAY_ADDRESS", *(s3_endpoint.env if s3_endpoint else ()))
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(s3_endpoint.env if s3_endpoint else {})
    cluster = LocalCluster(node2_delay_s=SLOW_NODE_DELAY_S)
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


_SMALL = ["num_samples=8", "image.width=96", "image.height=96", "output.shard_size=2", "render.backend=torch"]


def _quickstart():
    """The quickstart recipe, small: 8 samples of 96x96, shards of 2."""
    return load_recipe(ROOT / "recipes" / "quickstart.yaml", _SMALL)


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


def test_progress_ticks_once_per_sample_made(cluster, quickstart_reference, tmp_path):
    """The driver's progress comes from the shard makers' own counts: one tick per sample, as
    under the local engine; the run's summary counts the cluster; the bytes are the local engine's."""
    from synthgen.engine.ray_engine import run_shards
    from synthgen.engine.run_folder import RunFolder, plan_shards
    from synthgen.run import factory_class

    recipe = _quickstart()
    folder, tasks = RunFolder(str(tmp_path / "ray")), plan_shards(8, 2)
    folder.prepare(recipe, tasks)
    ticks = []
    made = run_shards(factory_class(recipe), recipe, folder, tasks, tasks, lambda: ticks.append(1), lambda: False,
                      cluster.address)
    assert len(ticks) == 8
    assert sum(made["shards_per_node"].values()) == 4 and made["nodes"] == 2 and made["cpus"] == 2
    assert _shard_bytes(tmp_path / "ray") == quickstart_reference


def test_the_ray_engine_writes_to_s3_byte_identical_to_the_local_engine(cluster, s3_endpoint,
                                                                         quickstart_reference):
    """Output to s3:// (moto's server over HTTP) from both nodes: each Ray task stages its shard on
    its own node and puts it, sidecar last; the bucket holds the local engine's bytes, status reads
    it, no in-flight marker is left, and stats.ray says what made the shards (not stats.workers)."""
    if s3_endpoint is None:
        pytest.skip("needs moto[server] and s3fs")
    from synthgen.report import run_status

    manifest = generate(_quickstart(), "s3://bucket/ray", progress=False, engine="ray", ray_address=cluster.address)
    assert manifest["complete"] and manifest["num_samples_written"] == 8
    assert "workers" not in manifest["stats"] and manifest["stats"]["ray"]["nodes"] == 2
    assert sum(manifest["stats"]["ray"]["shards_per_node"].values()) == 4
    fs = s3_endpoint.fs
    fs.invalidate_cache()
    stored = {p.rsplit("/", 1)[1]: fs.cat_file(p) for p in sorted(fs.glob("bucket/ray/shards/shard-*.tar"))}
    assert stored == quickstart_reference
    assert not [p for p in fs.ls("bucket/ray/logs") if p.endswith(".writing")]
    status = run_status("s3://bucket/ray")
    assert status["done"] == status["total"] == 8 and status["in_progress"] == []


def test_failing_samples_count_against_the_error_budget_as_under_the_local_engine(cluster, tmp_path):
    """A sample that raises (an undecodable background) is recorded, never retried: the same
    failures and shard bytes as the local engine, and the same one-error stop under max_errors=0."""
    import cv2
    import numpy as np

    from synthgen.errors import ErrorBudgetExceeded

    backgrounds = tmp_path / "bg"
    backgrounds.mkdir()
    cv2.imwrite(str(backgrounds / "good.png"), np.full((64, 64, 3), 90, np.uint8))
    (backgrounds / "broken.jpg").write_bytes(b"not an image at all")
    # the backdrop folder is read where no scene geometry is drawn (the quickstart's default draws one)
    folder = ["backend.shaded.background=folder", f"backend.shaded.background_dir={backgrounds}", "scene.geometry=none"]
    tolerant = load_recipe(ROOT / "recipes" / "quickstart.yaml", [*_SMALL, *folder, "output.max_errors=0.9"])
    local = generate(tolerant, tmp_path / "local", workers=1, progress=False)
    on_ray = generate(tolerant, tmp_path / "ray", progress=False, engine="ray", ray_address=cluster.address)
    assert 0 < on_ray["num_errors"] < 8 and on_ray["errors"] == local["errors"]
    assert _shard_bytes(tmp_path / "ray") == _shard_bytes(tmp_path / "local")
    strict = tolerant.model_copy(update={"output": tolerant.output.model_copy(update={"max_errors": 0})})
    with pytest.raises(ErrorBudgetExceeded, match="output.max_errors=0"):
        generate(strict, tmp_path / "strict", progress=False, engine="ray", ray_address=cluster.address)


@pytest.fixture(scope="module")
def controlnet_sam(tmp_path_factory):
    """A tiny ControlNet + SAM recipe (models built here, on disk) and its shards from the local engine."""
    pytest.importorskip("diffusers")
    from synthgen.testing.tiny_models import build_tiny_sd15
    from synthgen.testing.tiny_models import build_tiny_sam

    root = tmp_path_factory.mktemp("controlnet_sam")
    sd, sam = build_tiny_sd15(root / "sd15", num_controlnets=1), build_tiny_sam(root / "sam")
    backend = {"kind": "controlnet", "controlnet": {
        "family": "sd15", "base_model": str(sd["base"]), "steps": 2, "dtype": "fp32", "batch_size": 2,
        "device": "cpu", "local_files_only": True,
        "controlnets": [{"model": str(sd["controlnets"][0]), "layer": "normal", "scale": 1.0}]}}
    flt = {"sam": {"model": str(sam), "min_iou": 0.0, "min_keypoints_in_mask": 0.0}}
    recipe = small_recipe(num_samples=4, image={"width": 64, "height": 64}, backend=backend, filter=flt,
                          output={"shard_size": 2})
    generate(recipe, root / "local", workers=1, loader_workers=0, progress=False)
    return recipe, _shard_bytes(root / "local")


def test_controlnet_and_sam_with_a_device_actor_are_byte_identical(cluster, controlnet_sam, tmp_path):
    recipe, reference = controlnet_sam
    manifest = generate(recipe, tmp_path / "ray", progress=False, engine="ray", ray_address=cluster.address)
    assert manifest["complete"] and manifest["num_samples_written"] == 4
    assert len(reference) == 2 and _shard_bytes(tmp_path / "ray") == reference


def test_a_killed_device_actor_is_restarted_and_its_shard_made_again(cluster, controlnet_sam, tmp_path):
    """SIGKILL of the device actor's process while it writes a shard: Ray restarts the actor (the
    models are loaded again) and runs the shard again; the dataset is the same bytes."""
    recipe, reference = controlnet_sam
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    out = tmp_path / "ray"
    run = _cli(cluster, tmp_path / "recipe.yaml", out)
    try:
        writers = _wait_for_writer(run, out, lambda: {p.pid: p for p in cluster.processes()
                                                      if "DeviceShards" in _title(p)})
        _kill_all(writers)
        output, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output
    assert _shard_bytes(out) == reference
    assert not list((out / "shards").glob("*.partial-*"))


def test_sigterm_finishes_the_shards_in_flight_and_a_rerun_completes_identically(cluster, quickstart_reference,
                                                                                   tmp_path):
    """SIGTERM to the driver (a preempted head pod, ``kubectl delete``): no new shard starts, the
    ones in flight finish, one line and exit 143; the same command again completes the run."""
    import signal

    out = tmp_path / "ray"
    run = _cli(cluster, ROOT / "recipes" / "quickstart.yaml", out, *_SMALL)
    try:
        _wait_for_writer(run, out, lambda: {p.pid: p for p in cluster.processes()})
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 143, output
    assert "interrupted:" in output and "of 4 shards complete; rerun the same command to resume" in output
    rerun = _cli(cluster, ROOT / "recipes" / "quickstart.yaml", out, *_SMALL)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    assert _shard_bytes(out) == quickstart_reference


def test_losing_the_second_node_mid_shard_still_completes_with_the_same_bytes(cluster, quickstart_reference,
                                                                               tmp_path):
    """The CLI drives the run; once the slow second node is writing a shard, all its processes are
    killed with SIGKILL: Ray runs that shard again on the head and the dataset is the same bytes."""
    out = tmp_path / "ray"
    run = _cli(cluster, ROOT / "recipes" / "quickstart.yaml", out, *_SMALL)
    try:
        _wait_for_writer(run, out, lambda: {p.pid: p for p in cluster.node2_processes()})
        cluster.kill_node2()
        output, _ = run.communicate(timeout=600)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, output
    assert not cluster.node2_processes()
    assert _shard_bytes(out) == quickstart_reference
    assert not list((out / "shards").glob("*.partial-*"))


def _cli(cluster, recipe: Path, out: Path, *args: str) -> subprocess.Popen:
    """``synthgen generate RECIPE --out OUT --engine ray --ray-address ...`` in the background."""
    return subprocess.Popen([sys.executable, "-m", "synthgen", "generate", str(recipe), "--out", str(out), *args,
                             "--engine", "ray", "--ray-address", cluster.address, "--no-progress"],
                            cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_writer(run: subprocess.Popen, out: Path, candidates) -> list:
    """Wait until one of ``candidates()`` (pid -> process) holds a partial shard in ``out``
    (``.partial-PID``); returns that process. Bounded only against a hang, not a timing assertion."""
    deadline = time.monotonic() + 300
    while True:
        procs = candidates()
        for partial in (out / "shards").glob("*.tar.partial-*"):
            pid = partial.name.rsplit("-", 1)[1]
            if pid.isdigit() and int(pid) in procs:
                return [procs[int(pid)]]
        assert run.poll() is None, f"the run ended before the process to kill wrote a shard:\n{run.stdout.read()}"
        assert time.monotonic() < deadline, "no shard was started by the process to kill"
        time.sleep(0.05)


def _title(proc) -> str:
    try:
        return " ".join(proc.cmdline())
    except Exception:
        return ""


def _kill_all(procs: list) -> None:
    from synthgen.testing.ray_cluster import kill_processes

    kill_processes(procs)
