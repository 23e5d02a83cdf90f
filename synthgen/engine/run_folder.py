# Over 500 lines on purpose: one object, the run-folder protocol, the same over folders and fsspec URLs.
"""The run folder: where a run's shards, sidecars, manifest and markers live, and how a shard is
committed there. Every engine (processes and ranks here; tasks; Ray next) writes through it, and
``status``, ``report``, ``export``, ``finalize`` and :mod:`synthgen.data` read through it.

Layout (a local folder or any fsspec URL: ``s3://``, ``gs://``, ``az://``, ``file://``, ``memory://``)::

    manifest.json            the recipe, its hash, the complete shards (rewritten as shards land)
    shards/shard-K.tar       samples [K*S, min((K+1)*S, N)), webdataset records
    shards/shard-K.json      the sidecar: sample range, counts, rejects, failures, timings
    rejected/shard-K.tar     rejected samples (``filter.write_rejected``), for inspection
    logs/                    rank / task logs, rank/task markers, progress counts, and on object
                             stores the in-flight markers shard-K.writing (never data)

Commit protocol. A shard is complete when its tar and its sidecar both exist and the sidecar's
range is the planned one; readers and resume trust nothing else.

- Local folder: the tar is written to ``shard-K.tar.partial-PID`` (fsynced), the sidecar renamed
  into place, then the tar renamed: a reader never sees a partial tar.
- Object store (no rename): the tar is written to a local staging file (one per shard in flight),
  put whole under its final key (multipart for large files), then the sidecar is put: the sidecar
  is the completion marker, so an interrupted upload leaves nothing a reader takes for data.
  Transient storage errors are retried with backoff; then the shard fails (:class:`StorageError`).
  The two halves (:meth:`RunFolder.stage_shard`, :meth:`RunFolder.publish_shard`) may run in
  different threads or processes of one machine, so that an upload need not hold up the next shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import webdataset as wds

from synthgen import __version__
from synthgen.errors import StorageError, UserError
from synthgen.recipe import Recipe, recipe_hash

log = logging.getLogger(__name__)

SHARD_DIR = "shards"
REJECTED_DIR = "rejected"
LOG_DIR = "logs"
MANIFEST = "manifest.json"
TAR_MTIME = 1_700_000_000
BACKEND_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
                    "abfs": "adlfs", "abfss": "adlfs", "adl": "adlfs"}
UPLOAD_TRIES = 5
UPLOAD_BACKOFF_S = 0.5


class ShardDropped(Exception):
    """A staged shard was not published because the run is being stopped."""


# --- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardTask:
    """Shard ``index`` covers samples ``[start, stop)``."""

    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"


@dataclass(frozen=True)
class StagedShard:
    """A shard written to local staging files (:meth:`RunFolder.stage_shard`), not yet published:
    ``tar`` and ``rejected`` are local paths, ``info`` its sidecar. Picklable: a worker process
    stages, another thread or process may publish on the same machine."""

    task: ShardTask
    tar: str
    rejected: str | None
    info: dict


def plan_shards(num_samples: int, shard_size: int) -> list[ShardTask]:
    return [ShardTask(k, s, min(s + shard_size, num_samples))
            for k, s in enumerate(range(0, num_samples, shard_size))]


def shards_of(tasks: list[ShardTask], part: int, parts: int) -> list[ShardTask]:
    """The shards that part ``part`` of ``parts`` makes (rank R of W, task K of N): ``k % parts == part``.

    The same split for ranks and tasks, so any mix of them makes the same dataset."""
    return [t for t in tasks if t.index % parts == part]


def parse_part(text: str, option: str = "--task") -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``; ``UserError`` otherwise."""
    try:
        part, parts = (int(x) for x in text.split("/"))
    except ValueError:
        part, parts = -1, 0
    if not 0 <= part < parts:
        raise UserError(f"{option} {text}: expected K/N with 0 <= K < N, e.g. {option} 0/4 "
                        f"(the first of four tasks)")
    return part, parts


# --- where ---------------------------------------------------------------------------------------
def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def _filesystem(url: str, storage_options: dict[str, Any] | None):
    """``(fsspec filesystem, root path without the protocol)`` for ``url``; one-line errors."""
    scheme = url.split("://", 1)[0].lower()
    try:
        import fsspec
    except ImportError:
        raise UserError(f"{url}: object-storage output needs fsspec; pip install 'synthgen[cloud]'") from None
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise UserError(f"{url}: unknown storage scheme {scheme}://; use a local folder or s3://, gs://, "
                        f"az://, file:// (fsspec URLs)") from None
    except ImportError:
        package = BACKEND_PACKAGES.get(scheme, f"the fsspec backend for {scheme}://")
        raise UserError(f"{url}: writing to {scheme}:// needs the {package} package; pip install {package} "
                        f"(or pip install 'synthgen[cloud]')") from None
    try:
        fs = cls(**(storage_options or {}))
    except Exception as exc:  # a backend's own validation of its options
        raise UserError(f"{url}: cannot open {scheme}:// with output.storage_options "
                        f"({type(exc).__name__}: {exc}); fix output.storage_options") from None
    return fs, cls._strip_protocol(url).rstrip("/")


class RunFolder:
    """One run's output location (a local folder or an fsspec URL) and its commit protocol.

    ``RunFolder(location, storage_options)``: ``storage_options`` go to the fsspec filesystem
    (``output.storage_options`` in the recipe); without them the backend's standard variables
    apply (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...).
    Built cheaply and picklable, so each worker process builds its own from the same arguments.
    """

    def __init__(self, location: str | Path, storage_options: dict[str, Any] | None = None):
        self.location = str(location)
        self.storage_options = dict(storage_options or {})
        scheme = self.location.split(":", 1)[0].lower()
        if not is_url(location) and scheme in BACKEND_PACKAGES and self.location[len(scheme):].startswith(":/"):
            raise UserError(f"{self.location}: looks like a {scheme}:// URL with a slash missing; write "
                            f"{scheme}://{self.location[len(scheme) + 2:].lstrip('/')} (or ./{self.location} "
                            f"for a local folder of that name)")
        if is_url(location) and not self.location.lower().startswith("file://"):
            self.fs, self.root = _filesystem(self.location, self.storage_options)
        else:
            self.fs = None
            self.root = self.location[len("file://"):] if self.location.lower().startswith("file://") \
                else self.location
        self.remote = self.fs is not None
        self._known: dict[int, dict[str, Any]] = {}  # sidecars of complete shards read from a store

    def __reduce__(self):
        return RunFolder, (self.location, self.storage_options)

    def __str__(self) -> str:
        return self.location

    # --- names -----------------------------------------------------------------------------------
    def url(self, rel: str = "") -> str:
        """The full path (local) or URL (object store) of ``rel``, as readers open it."""
        if not rel:
            return self.location
        if self.remote:
            return self.fs.unstrip_protocol(f"{self.root}/{rel}")
        return str(Path(self.root) / rel)

    def _full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.remote else str(Path(self.root) / rel)

    @staticmethod
    def shard_rel(task: ShardTask) -> str:
        return f"{SHARD_DIR}/{task.name}.tar"

    @staticmethod
    def sidecar_rel(task: ShardTask) -> str:
        return f"{SHARD_DIR}/{task.name}.json"

    # --- small files -----------------------------------------------------------------------------
    def read_text(self, rel: str) -> str | None:
        """The text of ``rel`` (bytes that are not UTF-8 replaced); None when it does not exist."""
        try:
            if self.remote:
                data = self._retry(lambda: self.fs.cat_file(self._full(rel)), rel)
            else:
                data = Path(self._full(rel)).read_bytes()
        except FileNotFoundError:
            return None
        return data.decode(errors="replace")

    def write_text(self, rel: str, text: str) -> None:
        """Write ``rel`` whole: a reader sees the old text or the new, never a part."""
        if self.remote:
            self._retry(lambda: self.fs.pipe_file(self._full(rel), text.encode()), rel)
            return
        path = Path(self._full(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def remove(self, rel: str) -> None:
        try:
            if self.remote:
                self.fs.rm_file(self._full(rel))
            else:
                Path(self._full(rel)).unlink()
        except FileNotFoundError:
            pass

    def names(self, rel_dir: str) -> list[str]:
        """File names in ``rel_dir`` (empty when it does not exist)."""
        try:
            if self.remote:
                self.fs.invalidate_cache(self._full(rel_dir))
                return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self._full(rel_dir), detail=False))
            return sorted(p.name for p in Path(self._full(rel_dir)).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _retry(self, action: Callable[[], Any], rel: str) -> Any:
        """``action()``, retried with exponential backoff on transient storage errors."""
        for attempt in range(UPLOAD_TRIES):
            try:
                return action()
            except (FileNotFoundError, PermissionError, UserError):
                raise
            except Exception as exc:
                if attempt == UPLOAD_TRIES - 1:
                    raise StorageError(f"{self.url(rel)}: storage error after {UPLOAD_TRIES} tries "
                                       f"({type(exc).__name__}: {exc})") from None
                log.warning("%s: %s: %s; retrying", self.url(rel), type(exc).__name__, exc)
                time.sleep(UPLOAD_BACKOFF_S * 2 ** attempt)

    # --- shards ----------------------------------------------------------------------------------
    def read_sidecars(self, tasks: list[ShardTask]) -> dict[int, dict[str, Any]]:
        """Sidecar info of every complete shard of ``tasks``, by shard index.

        One listing per call; an object store's sidecars are fetched once (a complete shard's
        sidecar never changes; a shard deleted since is no longer listed)."""
        present = set(self.names(SHARD_DIR))
        listed = [t for t in tasks if f"{t.name}.json" in present and f"{t.name}.tar" in present]
        known = {t.index: self._known[t.index] for t in listed if t.index in self._known}
        wanted = [t for t in listed if t.index not in known]
        if self.remote:
            blobs = self.fs.cat([self._full(self.sidecar_rel(t)) for t in wanted], on_error="omit") if wanted else {}
            texts = {t.index: blobs.get(self._full(self.sidecar_rel(t))) for t in wanted}
        else:
            texts = {t.index: _read_or_none(Path(self._full(self.sidecar_rel(t)))) for t in wanted}
        out = dict(known)
        for task in wanted:
            try:
                info = json.loads(texts[task.index]) if texts[task.index] is not None else None
            except (UnicodeDecodeError, json.JSONDecodeError):
                info = None
            if isinstance(info, dict) and info.get("start") == task.start and info.get("stop") == task.stop:
                out[task.index] = info
                if self.remote:
                    self._known[task.index] = info
        return out

    def is_complete(self, task: ShardTask) -> bool:
        return task.index in self.read_sidecars([task])

    def complete(self, tasks: list[ShardTask]) -> set[int]:
        return set(self.read_sidecars(tasks))

    def shard_urls(self, tasks_or_manifest: dict[str, Any]) -> list[str]:
        """Paths / URLs of the shards a manifest lists."""
        return [self.url(s["path"]) for s in tasks_or_manifest["shards"]]

    def commit_shard(self, task: ShardTask, records: Iterable[dict[str, Any]],
                     extra: dict[str, Any] | None = None,
                     rejected: Callable[[], list[dict[str, Any]]] | None = None) -> dict[str, Any]:
        """Write a whole shard by the commit protocol; ``records`` are webdataset samples of bytes.

        ``extra`` (rejected/failed sample lists, timings) is read after ``records`` is exhausted,
        so a generator may fill it. ``rejected()`` gives records for ``rejected/`` (inspection
        only). Returns the sidecar info (sample range, count, bytes, extra).
        :meth:`stage_shard` then :meth:`publish_shard`, in this thread."""
        return self.publish_shard(self.stage_shard(task, records, extra, rejected))

    def stage_shard(self, task: ShardTask, records: Iterable[dict[str, Any]],
                    extra: dict[str, Any] | None = None,
                    rejected: Callable[[], list[dict[str, Any]]] | None = None) -> "StagedShard":
        """The first half of :meth:`commit_shard`: the shard's tar (and its rejected samples' tar)
        written to staging files, nothing a reader trusts yet. On an object store a small
        in-flight marker (``logs/shard-K.writing``, never data) tells ``status`` it is being
        written until :meth:`publish_shard` (or :meth:`drop_partials`) removes it."""
        if self.remote:
            marker = json.dumps({"started_at": round(time.time(), 3), "pid": os.getpid()}).encode()
            try:  # one try: only status reads it, the shard's own puts are the ones retried
                self.fs.pipe_file(self._full(self.in_flight_rel(task)), marker)
            except Exception as exc:
                log.debug("%s: %s", self.in_flight_rel(task), exc)
        try:
            tmp, count = _write_tar(self._staging(self.shard_rel(task)), records, durable=not self.remote)
            try:
                kept_aside = rejected() if rejected is not None else []
                side = _write_tar(self._staging(f"{REJECTED_DIR}/{task.name}.tar"), kept_aside,
                                  durable=not self.remote)[0] if kept_aside else None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except BaseException:
            self._forget_in_flight(task)
            raise
        info = {"shard": f"{task.name}.tar", "start": task.start, "stop": task.stop, "samples": count,
                "bytes": tmp.stat().st_size, "finished_at": round(time.time(), 3)} | (extra or {})
        return StagedShard(task, str(tmp), str(side) if side else None, info)

    def publish_shard(self, staged: "StagedShard", abort: Callable[[], bool] = lambda: False) -> dict[str, Any]:
        """The second half of :meth:`commit_shard`: make a staged shard complete; returns its sidecar info.

        Local: the sidecar, then the tar renamed into place. Object store: the tar put whole, then
        the sidecar that vouches for it, so an upload cut short leaves nothing a reader trusts.
        ``abort()`` (asked before each put) drops the shard instead: its tar, if already put, is
        removed, and no sidecar is written. The staging files are removed either way."""
        task, tmp = staged.task, Path(staged.tar)
        try:
            if staged.rejected:
                self._publish(Path(staged.rejected), f"{REJECTED_DIR}/{task.name}.tar")
            text = json.dumps(staged.info, sort_keys=True)
            if self.remote:  # the tar, then the sidecar that vouches for it
                if abort():
                    raise ShardDropped(task.name)
                self._publish(tmp, self.shard_rel(task))
                if abort():
                    self.remove(self.shard_rel(task))
                    raise ShardDropped(task.name)
                self.write_text(self.sidecar_rel(task), text)
            else:  # the sidecar, then the tar renamed into place
                self.write_text(self.sidecar_rel(task), text)
                os.replace(tmp, self._full(self.shard_rel(task)))
        finally:
            tmp.unlink(missing_ok=True)
            if staged.rejected:
                Path(staged.rejected).unlink(missing_ok=True)
            self._forget_in_flight(task)
        return staged.info

    @staticmethod
    def in_flight_rel(task: ShardTask) -> str:
        return f"{LOG_DIR}/{task.name}.writing"

    def _forget_in_flight(self, task: ShardTask) -> None:
        if self.remote:
            try:
                self.remove(self.in_flight_rel(task))
            except Exception as exc:  # only status reads it; a stale one is removed at the next run's start
                log.debug("%s: %s", self.in_flight_rel(task), exc)

    def in_flight(self, tasks: list[ShardTask]) -> list[str]:
        """Names of the shards of ``tasks`` being written now (those a killed writer left too, until
        a run makes them): local partial files, or an object store's in-flight markers, less the
        shards already complete."""
        if not self.remote:
            shards = Path(self._full(SHARD_DIR))
            return sorted(p.name for p in shards.glob("*.partial-*")) if shards.is_dir() else []
        marked = {name[:-len(".writing")] for name in self.names(LOG_DIR) if name.endswith(".writing")}
        wanted = [t for t in tasks if t.name in marked]
        complete = set(self.read_sidecars(wanted)) if wanted else set()
        return sorted(t.name for t in wanted if t.index not in complete)

    def clear_in_flight(self, tasks: list[ShardTask]) -> None:
        """Remove the in-flight markers of ``tasks`` that an earlier, killed run left (object stores)."""
        if not self.remote:
            return
        names = set(self.names(LOG_DIR))
        for task in tasks:
            if f"{task.name}.writing" in names:
                self.remove(self.in_flight_rel(task))

    def _staging(self, rel: str) -> Path:
        """Where ``rel`` is written before it is published; stale partials of it are removed.

        Local: beside its final name. Object store: in ``$SYNTHGEN_STAGING`` (default the system
        temporary folder), a name unique to this run folder and shard."""
        if self.remote:
            tag = hashlib.sha1(self.url().encode()).hexdigest()[:12]
            final = Path(os.environ.get("SYNTHGEN_STAGING", tempfile.gettempdir())) / \
                f"synthgen-{tag}-{rel.replace('/', '-')}"
        else:
            final = Path(self._full(rel))
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f"{final.name}.partial-*"):
            stale.unlink(missing_ok=True)  # left by a killed run: only this shard's owner writes here
        return final.with_name(f"{final.name}.partial-{os.getpid()}")

    def staging_file(self, rel: str) -> Path:
        """A local file this process may write ``rel`` to before it is published (stale copies
        of it removed): beside ``rel`` in a local folder, in ``$SYNTHGEN_STAGING`` for a store."""
        return self._staging(rel)

    def drop_partials(self, task: ShardTask) -> None:
        """Remove what a killed writer of ``task`` left (never a complete shard)."""
        for rel in (self.shard_rel(task), f"{REJECTED_DIR}/{task.name}.tar"):
            staged = self._staging(rel)
            staged.unlink(missing_ok=True)
        self._forget_in_flight(task)

    def _publish(self, tmp: Path, rel: str) -> None:
        if self.remote:
            self._retry(lambda: self.fs.put_file(str(tmp), self._full(rel)), rel)
        else:
            os.replace(tmp, self._full(rel))

    def put_file(self, local: str | Path, rel: str, retry: bool = True) -> None:
        """Copy the local file ``local`` to ``rel`` whole (object store: one put, retried with
        backoff unless ``retry`` is false; folder: copy then rename)."""
        if self.remote:
            put = lambda: self.fs.put_file(str(local), self._full(rel))  # noqa: E731
            self._retry(put, rel) if retry else put()
            return
        self.write_text(rel, Path(local).read_text(errors="replace"))

    # --- the manifest --------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        """The run's manifest; one ``UserError`` unless this is a synthgen run folder."""
        hint = "pass the --out folder or URL of a `synthgen generate` run"
        text = self.read_text(MANIFEST)
        if text is None:
            raise UserError(f"{self}: no {MANIFEST} here, not a synthgen run; {hint}")
        try:
            manifest = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{self.url(MANIFEST)}: cannot be read as JSON ({exc}); {hint} (delete a damaged "
                            f"manifest and rerun the same `synthgen generate` command, or `synthgen finalize`, "
                            f"to rebuild it from the shards)") from None
        if not isinstance(manifest, dict) or not {"recipe", "recipe_hash", "shards"} <= manifest.keys():
            raise UserError(f"{self.url(MANIFEST)}: not a synthgen manifest (no recipe / recipe_hash / "
                            f"shards); {hint}")
        return manifest

    def recipe(self, manifest: dict[str, Any] | None = None) -> Recipe:
        """The run's recipe, validated by this synthgen version."""
        from pydantic import ValidationError

        from synthgen.recipe import format_validation_error

        manifest = manifest or self.read_manifest()
        try:
            return Recipe.model_validate(manifest["recipe"])
        except ValidationError as exc:
            raise UserError(f"{self.url(MANIFEST)}: its recipe is not valid for synthgen {__version__} "
                            f"({format_validation_error(exc)}); use the synthgen version that wrote it "
                            f"({manifest.get('synthgen_version', 'unknown')})") from None

    def write_manifest(self, recipe: Recipe, tasks: list[ShardTask],
                       stats: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``manifest.json`` listing every complete shard (whole, atomically)."""
        sidecars = self.read_sidecars(tasks)
        shards = [{"path": self.shard_rel(tasks[k]), "start": info["start"], "stop": info["stop"],
                   "samples": info["samples"], "rejected": len(info.get("rejected", [])),
                   "errors": len(info.get("errors", []))} for k, info in sorted(sidecars.items())]
        rejected = [r for info in sidecars.values() for r in info.get("rejected", [])]
        errors = [e for info in sidecars.values() for e in info.get("errors", [])]
        waited = sum(info.get("input_wait_seconds", 0.0) for info in sidecars.values())
        busy = sum(info.get("device_seconds", 0.0) for info in sidecars.values())
        stats = (stats or {}) | ({"device_input_wait_fraction": round(waited / (waited + busy), 4)}
                                 if waited + busy > 0 else {})
        manifest = {
            "format": "synthgen-webdataset/1",
            "synthgen_version": __version__,
            "recipe_hash": recipe_hash(recipe),
            "recipe": recipe.model_dump(mode="json"),
            "num_samples": recipe.num_samples,
            "num_samples_written": sum(s["samples"] for s in shards),
            "num_rejected": len(rejected),
            "num_errors": len(errors),
            "complete": len(shards) == len(tasks),
            "shards": shards,
            "rejected": sorted(rejected, key=lambda r: r["index"]),
            "errors": sorted(errors, key=lambda e: e["index"]),
        } | ({"stats": stats} if stats else {})
        self.write_text(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        return manifest

    # --- the --out checks ------------------------------------------------------------------------
    def prepare(self, recipe: Recipe, tasks: list[ShardTask]) -> None:
        """Refuse an ``--out`` that cannot be written or holds another recipe's data; otherwise
        create it and write the manifest of what is already there. Runs before any work."""
        fix = ("pass a folder path or URL you can write to (a new one, or the --out of an earlier run of "
               "this recipe)")
        if not self.remote:
            check_writable_folder(self.root, "--out", fix)
        old = self._manifest_recipe_hash()
        if old and old != recipe_hash(recipe):
            raise UserError(
                f"--out {self} already holds a dataset made by another recipe (hash {old}, this one "
                f"is {recipe_hash(recipe)}); choose a new --out or rerun the same recipe")
        try:
            self.write_manifest(recipe, tasks)
        except (FileNotFoundError, PermissionError, StorageError) as exc:
            raise UserError(f"--out {self}: cannot be written ({type(exc).__name__}: {exc}); {fix}; "
                            f"for object storage check the bucket name and the credentials "
                            f"(AWS_* variables or output.storage_options)") from None

    def _manifest_recipe_hash(self) -> str | None:
        """The recipe hash in the manifest; None when there is none; refuses a foreign file."""
        try:
            text = self.read_text(MANIFEST)
        except (PermissionError, IsADirectoryError, StorageError) as exc:
            raise UserError(f"--out {self}: cannot be read ({type(exc).__name__}: {exc}); check the "
                            f"path or bucket and the credentials") from None
        if text is None:
            return None
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            data = exc
        if not isinstance(data, dict) or "recipe_hash" not in data:
            raise UserError(f"--out {self}: {self.url(MANIFEST)} is not a readable synthgen manifest and would "
                            f"be overwritten; choose another --out, or delete it if it is a damaged "
                            f"synthgen manifest (it is rebuilt from the shards)")
        return data["recipe_hash"]

    # --- markers and progress of ranks and tasks -------------------------------------------------
    def clear_markers(self, prefix: str) -> None:
        """Remove the ``logs/PREFIX*`` markers and progress counts of an earlier run."""
        for name in self.names(LOG_DIR):
            if name.startswith(prefix) and name.endswith((".done", ".progress")):
                self.remove(f"{LOG_DIR}/{name}")

    def mark_done(self, name: str, info: dict[str, Any]) -> None:
        """``logs/NAME.done`` (JSON), written whole."""
        self.write_text(f"{LOG_DIR}/{name}.done", json.dumps(info))

    def markers(self, prefix: str) -> dict[str, dict[str, Any]]:
        """``{name: info}`` of the ``logs/PREFIX*.done`` markers."""
        out = {}
        for name in self.names(LOG_DIR):
            if name.startswith(prefix) and name.endswith(".done"):
                text = self.read_text(f"{LOG_DIR}/{name}")
                if text is not None:
                    out[name[:-len(".done")]] = json.loads(text)
        return out

    def write_progress(self, name: str, samples: int) -> None:
        """This rank's / task's samples made so far in this run (``logs/NAME.progress``)."""
        self.write_text(f"{LOG_DIR}/{name}.progress", json.dumps({"samples": samples, "at": time.time()}))

    def progress(self, prefix: str) -> dict[str, int]:
        out = {}
        for name in self.names(LOG_DIR):
            if name.startswith(prefix) and name.endswith(".progress"):
                text = self.read_text(f"{LOG_DIR}/{name}")
                try:
                    out[name[:-len(".progress")]] = int(json.loads(text)["samples"]) if text else 0
                except (ValueError, KeyError, TypeError):
                    continue  # a file being replaced
        return out


# --- local helpers -------------------------------------------------------------------------------
def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def _write_tar(tmp: Path, records: Iterable[dict[str, Any]], durable: bool = True) -> tuple[Path, int]:
    """Write records to ``tmp`` (fsynced when ``durable``: not a staging copy of an upload, which a
    crash makes useless anyway); returns it and the count. Removed on any failure."""
    count = 0
    try:
        with open(tmp, "wb") as stream:
            # fixed owner and mtime: the same samples always make the same bytes
            with wds.TarWriter(stream, encoder=False, user="synthgen", group="synthgen",
                               mtime=TAR_MTIME) as sink:
                for record in records:
                    sink.write(record)
                    count += 1
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, count


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: str | Path, label: str, fix: str) -> None:
    """Raise ``UserError`` unless ``folder`` is, or can be created as, a writable local folder.

    Nothing is created or written. ``label`` names the option (``--out``), ``fix`` ends the message.
    """
    if is_url(folder) and not str(folder).lower().startswith("file://"):
        raise UserError(f"{label} {folder}: must be a local folder here; {fix}")
    folder = Path(str(folder)[len("file://"):] if str(folder).lower().startswith("file://") else folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{label} {folder}: is an existing file, not a folder; {fix}")
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise UserError(f"{label} {folder}: cannot be created because {base} is a file, not a folder; {fix}")
    if not os.access(base, os.W_OK | os.X_OK):
        verb = "written" if base == folder else "created"
        raise UserError(f"{label} {folder}: cannot be {verb}, {base} is not writable (permissions or a "
                        f"read-only file system); {fix}")
