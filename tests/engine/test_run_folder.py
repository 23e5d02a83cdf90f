"""Object storage as output: a real S3 endpoint (moto's server over HTTP, through s3fs), the
commit protocol without rename, readers that trust only shards with a sidecar, one-line errors."""

import json
import os
import signal
import subprocess
import sys

import pytest
import webdataset as wds

import synthgen.data  # noqa: F401  (the reader: lets webdataset open fsspec URLs)
from synthgen.engine.run_folder import RunFolder, ShardDropped, ShardTask
from synthgen.errors import StorageError, UserError
from tests.fixtures.recipes import ROOT
from tests.fixtures.s3_server import SERVER_ERROR, HoldingRelay, S3Endpoint

RECIPE = str(ROOT / "recipes" / "quickstart.yaml")
ARGS = ["image.width=96", "image.height=96", "output.shard_size=2", "render.backend=torch", "seed=11"]
N = 6


def _generate(out, *extra, env=None, cwd=ROOT, **popen):
    cmd = [sys.executable, "-m", "synthgen", "generate", RECIPE, "--out", str(out), "--num-samples", str(N),
           "--workers", "1", "--no-progress", *extra, *ARGS]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            **popen)


def _cli(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "synthgen", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def s3():
    endpoint = S3Endpoint()
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    proc = _generate(out)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    return out


def _local_shards(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("shard-*.tar"))}


def _s3_shards(s3, prefix) -> dict[str, bytes]:
    s3.fs.invalidate_cache()
    return {p.rsplit("/", 1)[1]: s3.fs.cat_file(p) for p in sorted(s3.fs.glob(f"{prefix}/shards/shard-*.tar"))}


def test_a_run_to_s3_is_the_same_bytes_as_a_local_run_and_every_reader_takes_the_url(s3, local_run, tmp_path,
                                                                                     monkeypatch):
    staging = tmp_path / "staging"
    proc = _generate("s3://bucket/same", env=dict(s3.process_env(), SYNTHGEN_STAGING=str(staging)))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert _s3_shards(s3, "bucket/same") == _local_shards(local_run)
    assert list(staging.iterdir()) == []  # the staged tars went once put

    status = _cli("status", "s3://bucket/same", env=s3.process_env())
    assert status.returncode == 0 and f"{N}/{N} done" in status.stdout and "3/3 complete" in status.stdout
    report = _cli("report", "s3://bucket/same", env=s3.process_env())
    assert report.returncode == 0, report.stderr
    assert b"contact sheet" in s3.fs.cat_file("bucket/same/report.html")
    export = _cli("export", "coco", "s3://bucket/same", "--out", str(tmp_path / "coco"), "--no-progress",
                  env=s3.process_env())
    assert export.returncode == 0, export.stderr
    coco = json.loads((tmp_path / "coco" / "annotations" / "person_keypoints.json").read_text())
    assert len(coco["images"]) == N and len(list((tmp_path / "coco" / "images").iterdir())) == N

    from synthgen.data import load_shards

    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    items = list(load_shards("s3://bucket/same", split_by_node=False))
    local = list(load_shards(local_run, split_by_node=False))
    assert [i["__key__"] for i in items] == [i["__key__"] for i in local] == [f"{i:09d}" for i in range(N)]
    assert all((a["image"] == b["image"]).all() for a, b in zip(items, local))


def test_a_run_killed_during_an_upload_resumes_to_the_same_bytes(s3, local_run, monkeypatch):
    """The tar of shard 1 is put, its sidecar's PUT is held mid-flight and the run is killed -9:
    the tar without a sidecar is no data to any reader; the rerun makes it again, identical."""
    relay = HoldingRelay(s3.port, b"PUT /bucket/killed/shards/shard-000001.json")
    proc = _generate("s3://bucket/killed", env=s3.process_env(relay.url), start_new_session=True)
    try:
        assert relay.held.wait(timeout=300), proc.stderr.read() if proc.poll() is not None else "no upload seen"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        relay.close()
    s3.fs.invalidate_cache()
    assert s3.fs.exists("bucket/killed/shards/shard-000001.tar")
    assert not s3.fs.exists("bucket/killed/shards/shard-000001.json")

    from synthgen.data import shard_paths

    folder = RunFolder("s3://bucket/killed", {"endpoint_url": s3.url, "key": "testing", "secret": "testing"})
    complete = folder.complete([ShardTask(k, 2 * k, 2 * k + 2) for k in range(3)])
    assert 1 not in complete  # shard 0's writer may still have been uploading too
    status = _cli("status", "s3://bucket/killed", env=s3.process_env())
    assert f"{len(complete)}/3 complete" in status.stdout, status.stderr
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    if complete:
        assert shard_paths("s3://bucket/killed") == [f"s3://bucket/killed/shards/shard-{k:06d}.tar"
                                                     for k in sorted(complete)]
    else:
        with pytest.raises(UserError, match="no complete shard yet"):
            shard_paths("s3://bucket/killed")

    proc = _generate("s3://bucket/killed", env=s3.process_env())
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert _s3_shards(s3, "bucket/killed") == _local_shards(local_run)
    manifest = json.loads(s3.fs.cat_file("bucket/killed/manifest.json"))
    assert manifest["complete"] and manifest["num_samples_written"] == N


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_shard_the_store_keeps_refusing_fails_in_one_line_and_the_rest_is_kept(s3, workers):
    """Every PUT of shard 1's tar gets a 503: retried with backoff, then that shard fails with one
    line and counts against output.max_errors; the other shards are stored, the run exits 1, and
    the rerun (the store healthy again) completes. With 2 workers the tar is put by the main
    process while the workers make the next shards (a background upload): the same line."""
    prefix = f"bucket/refused{workers}"
    relay = HoldingRelay(s3.port, f"PUT /{prefix}/shards/shard-000001.tar".encode(), reply=SERVER_ERROR)
    try:
        proc = _generate(f"s3://{prefix}", "output.max_errors=10", "--workers", workers,
                         "output.storage_options={config_kwargs: {retries: {max_attempts: 1}}}",
                         env=s3.process_env(relay.url))
        assert proc.wait(timeout=600) == 1
    finally:
        relay.close()
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and relay.held.is_set()
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"synthgen: stopped: 1 shard(s) could not be stored (s3://{prefix}/shards/"
                           "shard-000001.tar: storage error after 5 tries")
    assert stderr.count("shard-000001 not stored") == 1  # logged once, by whoever uploaded it
    kept = _s3_shards(s3, prefix)
    assert sorted(kept) == ["shard-000000.tar", "shard-000002.tar"]
    proc = _generate(f"s3://{prefix}", "output.max_errors=10", "--workers", workers, env=s3.process_env())
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    after = _s3_shards(s3, prefix)
    assert sorted(after) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert all(after[name] == data for name, data in kept.items())  # complete shards are never rewritten
    assert json.loads(s3.fs.cat_file(f"{prefix}/manifest.json"))["complete"]


def test_a_background_upload_killed_leaves_no_sidecar_status_shows_it_being_written_and_logs_are_stored(
        s3, local_run, tmp_path):
    """--workers 2: the main process puts each staged shard while the workers make the next ones.
    Shard 1's tar PUT is held: meanwhile `status` on the URL counts it as being written (its
    in-flight marker, no sidecar); then the run is killed -9. No sidecar, so no reader trusts it;
    the rerun makes it again, identical; no marker is left; the rank log is in logs/ on the store."""
    relay = HoldingRelay(s3.port, b"PUT /bucket/background/shards/shard-000001.tar")
    env = dict(s3.process_env(relay.url), SYNTHGEN_STAGING=str(tmp_path / "staging"))
    proc = _generate("s3://bucket/background", "--workers", "2", env=env, start_new_session=True)
    try:
        assert relay.held.wait(timeout=300), proc.stderr.read() if proc.poll() is not None else "no upload seen"
        status = _cli("status", "s3://bucket/background", env=s3.process_env())
        assert status.returncode == 0, status.stderr
        writing = int(status.stdout.split(" being written")[0].rsplit(", ", 1)[1])
        assert writing >= 1  # shard 1 at least (shard 2 may be on its way too)
        folder = RunFolder("s3://bucket/background", {"endpoint_url": s3.url, "key": "testing",
                                                      "secret": "testing"})
        assert "shard-000001" in folder.in_flight([ShardTask(k, 2 * k, 2 * k + 2) for k in range(3)])
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        relay.close()
    s3.fs.invalidate_cache()
    assert not s3.fs.exists("bucket/background/shards/shard-000001.json")
    assert not s3.fs.exists("bucket/background/shards/shard-000001.tar")  # its PUT never reached the store

    proc = _generate("s3://bucket/background", "--workers", "2", env=dict(env, AWS_ENDPOINT_URL=s3.url))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert _s3_shards(s3, "bucket/background") == _local_shards(local_run)
    assert [p for p in s3.fs.ls("bucket/background/logs") if p.endswith(".writing")] == []
    status = _cli("status", "s3://bucket/background", env=s3.process_env())
    assert "3/3 complete, 0 being written" in status.stdout, status.stdout + status.stderr
    log_text = s3.fs.cat_file("bucket/background/logs/rank-0.log").decode()
    # the rerun's records at least (the killed run's are put every 30 s: a kill may come first)
    assert "shards to write into s3://bucket/background" in log_text
    assert list((tmp_path / "staging").iterdir()) == []  # the staged tars went once put


def test_sigterm_drops_a_background_upload_that_outlasts_the_grace_and_the_rerun_is_identical(s3, local_run,
                                                                                                tmp_path):
    """--workers 2, shard 1's tar PUT held (it never ends): SIGTERM with output.grace_s=2 starts no
    new shard, lets the rest finish, then drops the held upload before its sidecar; one line, exit
    143, no staged file, no marker left for it; the rerun completes, identical."""
    relay = HoldingRelay(s3.port, b"PUT /bucket/term/shards/shard-000001.tar")
    staging = tmp_path / "staging"
    env = dict(s3.process_env(relay.url), SYNTHGEN_STAGING=str(staging))
    proc = _generate("s3://bucket/term", "--workers", "2", "output.grace_s=2", env=env)
    try:
        assert relay.held.wait(timeout=300), proc.stderr.read() if proc.poll() is not None else "no upload seen"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
        relay.close()
    stderr = proc.stderr.read()
    line = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr and line.startswith("synthgen: interrupted: ") and \
        line.endswith("of 3 shards complete; rerun the same command to resume"), stderr[-2000:]
    s3.fs.invalidate_cache()
    assert not s3.fs.exists("bucket/term/shards/shard-000001.json")
    assert not s3.fs.exists("bucket/term/logs/shard-000001.writing")
    assert list(staging.iterdir()) == []
    proc = _generate("s3://bucket/term", "--workers", "2", env=dict(env, AWS_ENDPOINT_URL=s3.url))
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert _s3_shards(s3, "bucket/term") == _local_shards(local_run)


def test_unknown_scheme_and_missing_backend_are_one_line_and_write_nothing(tmp_path):
    proc = _cli("generate", RECIPE, "--out", "foo://bucket/run", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("synthgen: error: foo://")
    assert "unknown storage scheme foo://" in proc.stderr and "Traceback" not in proc.stderr
    import importlib.util

    if importlib.util.find_spec("gcsfs") is None:
        proc = _cli("generate", RECIPE, "--out", "gs://bucket/run", "--no-progress", cwd=tmp_path)
        assert proc.returncode == 2 and "needs the gcsfs package; pip install gcsfs" in proc.stderr
    proc = _cli("generate", RECIPE, "--out", "s3:/bucket/run", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2 and "write s3://bucket/run" in proc.stderr  # today's silent local folder
    assert list(tmp_path.iterdir()) == []  # no local folder named like the URL


def test_the_object_store_commit_protocol_in_memory():
    """memory://: the tar goes first, then the sidecar that makes it a shard; a failing record
    stream leaves neither; storage errors are retried, then end in one StorageError."""
    folder = RunFolder("memory://protocol")
    task = ShardTask(0, 0, 2)
    records = [{"__key__": f"{i:09d}", "json": b"{}"} for i in range(2)]

    def broken():
        yield records[0]
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        folder.commit_shard(task, broken())
    assert folder.names("shards") == [] and not folder.is_complete(task)
    info = folder.commit_shard(task, iter(records))
    assert folder.names("shards") == ["shard-000000.json", "shard-000000.tar"] and folder.is_complete(task)
    assert info["samples"] == 2
    staged = folder.stage_shard(ShardTask(1, 2, 3), iter(records[:1]))
    assert folder.in_flight([ShardTask(1, 2, 3)]) == ["shard-000001"]  # a marker, never data
    with pytest.raises(ShardDropped):
        folder.publish_shard(staged, abort=lambda: True)  # a stopped run: no sidecar, nothing staged
    assert folder.names("shards") == ["shard-000000.json", "shard-000000.tar"]
    assert folder.in_flight([ShardTask(1, 2, 3)]) == [] and not os.path.exists(staged.tar)
    folder.remove("shards/shard-000000.json")  # a tar without its sidecar is not a shard
    assert not folder.is_complete(task)
    samples = list(wds.WebDataset(folder.url("shards/shard-000000.tar"), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001"]  # the tar itself is whole


def test_storage_errors_are_retried_then_fail_the_shard_in_one_line(s3, monkeypatch, tmp_path):
    from synthgen.engine import run_folder

    monkeypatch.setattr(run_folder, "UPLOAD_BACKOFF_S", 0.01)
    monkeypatch.setenv("SYNTHGEN_STAGING", str(tmp_path))
    dead = RunFolder("s3://bucket/dead", {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s",
                                          "config_kwargs": {"retries": {"max_attempts": 1},
                                                            "connect_timeout": 1}})
    with pytest.raises(StorageError, match=r"s3://bucket/dead/shards/shard-000000.tar: storage error after 5 tries"):
        dead.commit_shard(ShardTask(0, 0, 1), iter([{"__key__": "000000000", "json": b"{}"}]))
    assert list(tmp_path.iterdir()) == []  # the staged tar is dropped


def test_a_bad_task_spec_is_one_line(tmp_path):
    from synthgen.engine.run_folder import parse_part, shards_of

    with pytest.raises(UserError, match="--task 2/2: expected K/N"):
        parse_part("2/2")
    tasks = [ShardTask(k, k, k + 1) for k in range(5)]
    assert [t.index for t in shards_of(tasks, 1, 2)] == [1, 3]
    assert sorted(t.index for p in range(3) for t in shards_of(tasks, p, 3)) == list(range(5))
