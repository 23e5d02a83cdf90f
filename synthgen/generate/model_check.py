"""Whether the models a run needs can be loaded, checked before loading any.

Shared by the ControlNet backend (:mod:`synthgen.generate.controlnet`) and the SAM filter
(:mod:`synthgen.filter`). A recipe names each model by a local folder or a Hugging Face hub id
(``owner/name``). A model is available when the folder - or, for a hub id, its snapshot in the
Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``) - holds the files its loader needs, or, when the
hub may be used (see :func:`hub_offline`), when the hub serves it.

Nothing here waits long: the cache is read without network access, and the hub is asked at most
once per check (:func:`hub_status`, with a timeout); offline, an uncached model fails at once.
Each missing model is one clause ``FIELD='NAME': WHY; HOW TO FETCH IT`` (:func:`missing_entry`),
and :func:`missing_model_error` joins them into one single-line
:class:`~synthgen.errors.MissingModelError` (a UserError: the CLI prints it and exits 2).
:func:`check_backend_models` checks every package and model a recipe needs, before any work.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from synthgen.errors import MissingModelError, UserError
from synthgen.recipe import Recipe, SamConfig

__all__ = ["ASK_HUB", "OFFLINE_SWITCHES", "WantedModel", "cached_snapshot", "check_sam_model", "fetch_hint", "hub_offline",
           "hub_status", "is_hub_id", "locate", "missing_entry", "missing_model_error", "missing_models",
           "model_folder_problems", "sam_model"]

ASK_HUB = "ask the hub"  # :func:`locate`: not on disk, but the hub may serve it
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
SAM_EXAMPLE_ID = "facebook/sam-vit-base"
SAM_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TRUE = ("1", "ON", "YES", "TRUE")
OFFLINE_SWITCHES = "HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1"  # what :func:`hub_offline` reads


@dataclass(frozen=True)
class WantedModel:
    """One model a recipe names, and how to tell whether a folder holds it."""

    field: str                             # recipe key, e.g. "filter.sam.model"
    name: str                              # its value: a hub id or a local folder
    what: str                              # what a usable folder holds (for the fix)
    problems: Callable[[Path], list[str]]  # what a folder lacks; [] = usable
    example_id: str | None = None          # hub id to suggest when ``name`` is a path
    otherwise: str = ""                    # another way out, e.g. "set filter.sam: null"


# --- the hub and the cache ---------------------------------------------------------------------
def hub_offline(local_files_only: bool = False) -> bool:
    """True when nothing may be fetched: ``local_files_only``, ``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE`` set (in the environment now, or when huggingface_hub was imported)."""
    from huggingface_hub import constants

    env = any(os.environ.get(k, "").strip().upper() in _TRUE
              for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(local_files_only or env or constants.HF_HUB_OFFLINE)


def hub_status(repo_id: str, timeout: float = 5.0) -> tuple[str | None, bool]:
    """(None when the hub serves ``repo_id`` now, else why not; whether the hub answered).

    One metadata request with ``timeout`` seconds: an unreachable hub (DNS, refused, proxy)
    fails within it, instead of after a loader's download retries.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except GatedRepoError:
        return "gated on the hub: accept its licence on huggingface.co, then `hf auth login`", True
    except RepositoryNotFoundError:
        return "no such model on the hub (check the spelling)", True
    except Exception as exc:  # connection refused, DNS, timeout, proxy...
        return f"the hub is unreachable ({type(exc).__name__})", False
    return None, True


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a hub id (``owner/name``) rather than a path."""
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~"))


def cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (main), or None; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None


# --- folders -------------------------------------------------------------------------------------
def _has_weights(folder: Path) -> bool:
    """Whether ``folder`` holds a weights file (*.safetensors, *.bin or their shard index)."""
    return any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir() if p.is_file())


def model_folder_problems(folder: Path, prefix: str = "") -> list[str]:
    """What a diffusers/transformers model folder lacks: config.json and weights."""
    problems = []
    if not (folder / "config.json").is_file():
        problems.append(f"no {prefix}config.json")
    if not _has_weights(folder):
        problems.append(f"no {prefix}weights (*.safetensors or *.bin)")
    return problems


def locate(name: str, problems: Callable[[Path], list[str]], offline: bool) -> str | None:
    """None when ``name`` loads from disk; else why not (one clause), or :data:`ASK_HUB` for a
    hub id that is not (completely) cached and that the hub may still serve.

    name: a local folder or a hub id; problems: what a folder lacks ([] = usable).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        found = problems(path)
        return f"local folder unusable ({', '.join(found)})" if found else None
    if not is_hub_id(name):
        return "no such local folder"
    snapshot = cached_snapshot(name)
    if snapshot is not None:
        found = problems(snapshot)
        if not found:
            return None
        if offline:
            return f"the cached copy is incomplete ({', '.join(found)})"
    return "not in the Hugging Face cache and the hub is offline" if offline else ASK_HUB


# --- messages ------------------------------------------------------------------------------------
def fetch_hint(name: str, what: str, example_id: str | None = None) -> str:
    """How to get model ``name``: the download command for a hub id, else a folder or an id."""
    if is_hub_id(name):
        return (f"fetch it with `huggingface-cli download {name}` (huggingface_hub >= 1.0: "
                f"`hf download {name}`) or set a local folder path holding {what}")
    hint = f"set a local folder path holding {what}, or a Hugging Face id"
    if example_id:
        hint += f" (e.g. `huggingface-cli download {example_id}`, or `hf download {example_id}`)"
    return hint


def missing_entry(model: WantedModel, reason: str) -> str:
    """One clause: ``FIELD='NAME': REASON; HOW TO FETCH IT[; or OTHERWISE]``."""
    entry = f"{model.field}={model.name!r}: {reason}; {fetch_hint(model.name, model.what, model.example_id)}"
    return f"{entry}; or {model.otherwise}" if model.otherwise else entry


def missing_model_error(owner: str, missing: list[str], offline_by: str | None) -> MissingModelError:
    """One single-line error for the ``missing`` clauses of ``owner`` ("the SAM filter").

    offline_by: what made the check offline (named in the message), or None when online.
    """
    mode = f" (offline: {offline_by})" if offline_by else ""
    return MissingModelError(f"{len(missing)} model(s) of {owner} are not on disk{mode}: "
                             + " | ".join(missing))


def missing_models(wanted: list[WantedModel], offline: bool) -> list[str]:
    """A :func:`missing_entry` clause per model of ``wanted`` that cannot be loaded.

    Online, an uncached hub id is looked up on the hub; once the hub fails to answer, the rest
    are reported with that answer instead of each waiting out its own timeout.
    """
    missing, unreachable = [], None
    for model in wanted:
        reason = locate(model.name, model.problems, offline)
        if reason == ASK_HUB:
            status = unreachable
            if status is None:
                status, answered = hub_status(model.name)
                if not answered:
                    unreachable = status
            reason = None if status is None else f"not in the Hugging Face cache and {status}"
        if reason is not None:
            missing.append(missing_entry(model, reason))
    return missing


# --- SAM -----------------------------------------------------------------------------------------
def _sam_folder_problems(folder: Path) -> list[str]:
    """What a SAM folder lacks: SamModel config and weights, and the SamProcessor's config."""
    problems = model_folder_problems(folder)
    if not any((folder / name).is_file() for name in SAM_PROCESSOR_FILES):
        problems.append(f"no {' or '.join(SAM_PROCESSOR_FILES)}")
    return problems


def sam_model(config: SamConfig) -> WantedModel:
    """The SAM model ``filter.sam`` names."""
    return WantedModel("filter.sam.model", config.model,
                       "a SamModel + SamProcessor (config.json, model.safetensors, "
                       "preprocessor_config.json, as save_pretrained writes them)",
                       _sam_folder_problems, SAM_EXAMPLE_ID,
                       "set filter.sam: null to turn the SAM filter off")


def check_sam_model(config: SamConfig) -> None:
    """Raise one :class:`MissingModelError` when the SAM model of ``filter.sam`` cannot be loaded."""
    offline = hub_offline()
    missing = missing_models([sam_model(config)], offline)
    if missing:
        raise missing_model_error("the SAM filter", missing, OFFLINE_SWITCHES if offline else None)


# --- every model a recipe needs ----------------------------------------------------------------------
def _require(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"{what} needs the '{module}' package: pip install 'synthgen[diffusion]'")


def check_backend_models(recipe: Recipe) -> None:
    """Fail before any work when a needed package or model is missing: the backend's weights
    and the SAM model of ``filter.sam``, all reported in one
    :class:`~synthgen.errors.MissingModelError` (see :mod:`synthgen.generate.model_check`)."""
    if recipe.backend.kind == "controlnet":
        _require("diffusers", "backend.kind=controlnet")
        _require("transformers", "backend.kind=controlnet")
    if recipe.filter.sam is not None:
        _require("transformers", "filter.sam")
    problems: list[str] = []
    if recipe.backend.kind == "controlnet":
        from synthgen.generate.pipelines import check_models_available

        try:
            check_models_available(recipe.backend.controlnet)
        except MissingModelError as exc:
            problems.append(str(exc))
    if recipe.filter.sam is not None:
        try:
            check_sam_model(recipe.filter.sam)
        except MissingModelError as exc:
            problems.append(str(exc))
    if problems:
        raise MissingModelError(" || ".join(problems))
