"""Independent tasks (--task K/N + finalize), and faults that end in one line: a full disk (a real
small tmpfs), SIGTERM / SIGINT, a killed main process; no process left behind, resumes identical."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.fixtures.recipes import ROOT
from tests.fixtures.s3_server import S3Endpoint

RECIPE = str(ROOT / "recipes" / "quickstart.yaml")
ARGS = ["image.width=96", "image.height=96", "output.shard_size=2", "render.backend=torch", "seed=11"]
N = 12  # 6 shards


def _generate(out, *extra, env=None, n=N, **popen):
    cmd = [sys.executable, "-m", "synthgen", "generate", RECIPE, "--out", str(out), "--num-samples", str(n),
           "--no-progress", *extra, *ARGS]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            **popen)


def _finalize(out, env=None):
    return subprocess.run([sys.executable, "-m", "synthgen", "finalize", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _shards(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("shard-*.tar"))}


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = _generate(out, "--workers", "1")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    return _shards(out)


# --- independent tasks ---------------------------------------------------------------------------
def test_two_tasks_one_after_the_other_then_finalize_make_the_one_run(tmp_path, reference):
    out = tmp_path / "tasks"
    proc = _generate(out, "--task", "0/2", "--workers", "1")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert sorted(_shards(out)) == ["shard-000000.tar", "shard-000002.tar", "shard-000004.tar"]
    early = _finalize(out)
    assert early.returncode == 1
    line = _last_line(early.stderr)
    assert "3 of 6 shards missing" in line
    for k in (1, 3, 5):
        assert f"shard-00000{k} (task 1/2)" in line
    assert not json.loads((out / "manifest.json").read_text())["complete"]

    proc = _generate(out, "--task", "1/2", "--workers", "1")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    done = _finalize(out)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_samples_written"] == N and manifest["stats"]["tasks"] == 2
    assert _shards(out) == reference


def test_two_tasks_at_once_on_s3_then_finalize_make_the_one_run(tmp_path, reference):
    s3 = S3Endpoint()
    try:
        procs = [_generate("s3://bucket/tasks", "--task", f"{k}/2", "--workers", "1", env=s3.process_env())
                 for k in range(2)]
        for proc in procs:
            assert proc.wait(timeout=600) == 0, proc.stderr.read()
        done = _finalize("s3://bucket/tasks", env=s3.process_env())
        assert done.returncode == 0, done.stderr
        s3.fs.invalidate_cache()
        stored = {p.rsplit("/", 1)[1]: s3.fs.cat_file(p) for p in s3.fs.glob("bucket/tasks/shards/shard-*.tar")}
        assert stored == reference
        assert json.loads(s3.fs.cat_file("bucket/tasks/manifest.json"))["complete"]
    finally:
        s3.stop()


# --- faults ------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A real 12 MB tmpfs, filled but for ~160 kB (two or three of these shards)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        free = os.statvfs(mount)
        filler = mount / "filler"
        with open(filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, free.f_bavail * free.f_frsize - 160 * 1024)
        yield mount, filler
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_ends_in_one_line_and_the_rerun_is_identical(small_disk, reference, workers):
    mount, filler = small_disk
    out = mount / "run"
    proc = _generate(out, "--workers", workers)
    assert proc.wait(timeout=600) == 1
    line = _last_line(proc.stderr.read())
    assert line.startswith(f"synthgen: stopped: {out}: no space left on the device")
    assert "of 6 shards complete; free space and rerun the same command" in line
    assert not list((out / "shards").glob("*.partial-*"))  # no partial shard visible
    kept = _shards(out)
    assert line.split("; ")[1] == f"{len(kept)} of 6 shards complete"
    assert len(kept) < 6 and all(reference[name] == data for name, data in kept.items())
    filler.unlink()
    proc = _generate(out, "--workers", workers)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert _shards(out) == reference


def _wait_for_a_shard(out, proc):
    deadline = time.monotonic() + 300
    while not ((out / "shards").is_dir() and list((out / "shards").glob("*.json"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)


@pytest.mark.parametrize("sig, workers, code, grace",
                         [(signal.SIGTERM, "2", 143, "30"), (signal.SIGINT, "1", 130, "30"),
                          (signal.SIGTERM, "1", 143, "0")])
def test_a_signal_ends_in_one_line_leaves_no_process_and_resumes_identical(tmp_path, reference, sig, workers,
                                                                          code, grace):
    """A run of 48 samples (24 shards: long enough that the signal lands mid-run on any machine)
    is signalled once its first shard is complete; its first 12 samples, resumed, are the
    reference's bytes (sample i and shard k do not depend on num_samples)."""
    out = tmp_path / "run"
    proc = _generate(out, "--workers", workers, f"output.grace_s={grace}", n=4 * N)
    _wait_for_a_shard(out, proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, sig)  # the main process only, as Kubernetes does
    assert proc.wait(timeout=120) == code
    line = _last_line(proc.stderr.read())
    assert line.startswith("synthgen: interrupted: ") and \
        line.endswith("of 24 shards complete; rerun the same command to resume")
    complete = int(line.split("interrupted: ")[1].split(" of")[0])
    assert 1 <= complete == len(_shards(out)) < 24
    psutil.wait_procs(children, timeout=10)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not list((out / "shards").glob("*.partial-*"))
    proc = _generate(out, "--workers", workers)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert {name: data for name, data in _shards(out).items() if name in reference} == reference


def test_workers_die_with_a_killed_main_process(tmp_path):
    out = tmp_path / "run"
    proc = _generate(out, "--workers", "2")
    _wait_for_a_shard(out, proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children
    proc.kill()  # SIGKILL: no handler runs in the main process
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not [c for c in alive if c.status() != psutil.STATUS_ZOMBIE]


def test_progress_counts_samples_across_workers_and_ranks_before_any_shard_lands(tmp_path):
    """The bar counts samples as they are made (worker ticks, other ranks' progress files), not
    only whole shards; its rate and ETA count this run's samples only (``initial``)."""
    from synthgen.engine.launch import Progress
    from synthgen.engine.run_folder import RunFolder, ShardTask

    folder = RunFolder(tmp_path)
    shards = [ShardTask(k, 4 * k, 4 * k + 4) for k in range(3)]
    folder.commit_shard(shards[0], iter([{"__key__": f"{i:09d}", "json": b"{}"} for i in range(4)]))
    bar = Progress(folder, shards, enabled=False, name="rank-0", peers="rank-")
    try:
        assert bar.n == bar.base == 4  # shard 0 was complete before this run
        for _ in range(3):
            bar.tick()
        folder.write_progress("rank-1", 2)  # another rank's samples so far
        bar.refresh()
        assert bar.n == 4 + 3 + 2 and bar.bar.total == 12
        ranked = Progress(folder, shards, enabled=False, name="rank-1", publish=True)
        ranked.tick()
        ranked.refresh()
        assert json.loads((tmp_path / "logs" / "rank-1.progress").read_text())["samples"] == 1
        ranked.close()
    finally:
        bar.close()
