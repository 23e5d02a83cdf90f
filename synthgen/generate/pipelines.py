"""The diffusers pipeline families the ``controlnet`` backend drives, and whether a recipe's models are there.

- :data:`FAMILIES`: per family (sd15, sdxl, flux) the pipeline and ControlNet classes, the call
  conventions and the base-model components it needs on disk (:class:`PipelineFamily`);
- :data:`SCHEDULERS`: the recipe's scheduler names as diffusers classes;
- :func:`check_models_available` before any work: it looks for every model on disk (a local
  folder, or the Hugging Face cache) without loading anything and raises one
  :class:`~synthgen.errors.MissingModelError` naming each missing model and how to fetch it;
  :func:`check_config` refuses settings that do not work together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.errors import UserError
from synthgen.generate.model_check import (OFFLINE_SWITCHES, WantedModel, hub_offline, missing_model_error,
                                           missing_models, model_folder_problems)
from synthgen.recipe import ControlNetConfig

__all__ = ["FAMILIES", "SCHEDULERS", "PipelineFamily", "check_config", "check_models_available",
           "wanted_models"]

# recipe scheduler name -> diffusers class; "default" keeps the base model's own scheduler
SCHEDULERS = {"unipc": "UniPCMultistepScheduler", "ddim": "DDIMScheduler",
              "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
              "dpm": "DPMSolverMultistepScheduler"}


@dataclass(frozen=True)
class PipelineFamily:
    """The diffusers classes and call conventions of one model family."""

    pipeline: str                 # pipeline class, loaded with from_pretrained(base_model)
    controlnet: str               # ControlNet class, loaded with from_pretrained(unit.model)
    multi: str                    # wrapper for several ControlNets
    image_arg: str                # name of the control image argument of __call__
    components: tuple[str, ...]   # base-model components the pipeline needs on disk
    negative_prompt: bool         # whether guidance uses a negative prompt
    load_kwargs: tuple[tuple[str, Any], ...] = ()  # extra from_pretrained arguments


FAMILIES = {
    # the safety checker is off: synthgen's filter stage checks images (blank/NaN, SAM)
    "sd15": PipelineFamily("StableDiffusionControlNetPipeline", "ControlNetModel", "MultiControlNetModel",
                   "image", ("unet", "vae", "text_encoder", "tokenizer", "scheduler"), True,
                   (("safety_checker", None), ("feature_extractor", None),
                    ("requires_safety_checker", False))),
    "sdxl": PipelineFamily("StableDiffusionXLControlNetPipeline", "ControlNetModel", "MultiControlNetModel",
                   "image", ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer",
                             "tokenizer_2", "scheduler"), True,
                   (("add_watermarker", False),)),
    # FLUX.1-dev is guidance-distilled: `guidance` is its embedded guidance (3.5), no negative
    "flux": PipelineFamily("FluxControlNetPipeline", "FluxControlNetModel", "FluxMultiControlNetModel",
                   "control_image", ("transformer", "vae", "text_encoder", "text_encoder_2",
                                     "tokenizer", "tokenizer_2", "scheduler"), False),
}

_CONFIG_ONLY = ("Scheduler", "Tokenizer", "TokenizerFast", "ImageProcessor", "FeatureExtractor",
                "Processor")


def check_config(config: ControlNetConfig) -> None:
    """Settings that only make sense together; raises :class:`UserError` naming the key."""
    if config.family == "flux" and config.eta is not None:
        raise UserError(f"backend.controlnet.eta={config.eta} does not work with family=flux (its "
                        "flow-matching sampler has no eta); set backend.controlnet.eta: null")
    if config.family == "flux" and config.scheduler not in ("default", "euler"):
        raise UserError(f"backend.controlnet.scheduler={config.scheduler!r} does not work with "
                        "family=flux: FLUX samples with its flow-matching Euler scheduler; set "
                        "backend.controlnet.scheduler: default")


def _family_of(pipeline_class: str) -> str | None:
    if "Flux" in pipeline_class:
        return "flux"
    if "XL" in pipeline_class:
        return "sdxl"
    if "StableDiffusion" in pipeline_class:
        return "sd15"
    return None


def _base_folder_problems(folder: Path, family: str) -> list[str]:
    """What a base-model folder lacks for ``family``: model_index.json and each component."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return ["no model_index.json"]
    index = json.loads(index_path.read_text())
    pipeline_class = str(index.get("_class_name", ""))
    other = _family_of(pipeline_class)
    if other is not None and other != family:
        hint = f"it holds a {other} model ({pipeline_class}), not {family}"
        return [f"{hint}: set backend.controlnet.family: {other}"]
    problems = []
    for name in FAMILIES[family].components:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            problems.append(f"no {name!r} in model_index.json")
            continue
        sub = folder / name
        if not sub.is_dir():
            problems.append(f"no {name}/ folder")
        elif str(entry[1]).endswith(_CONFIG_ONLY):
            if not any(sub.iterdir()):
                problems.append(f"an empty {name}/ folder")
        else:
            problems.extend(model_folder_problems(sub, f"{name}/"))
    return problems


def _folder_problems(folder: Path, kind: str, family: str) -> list[str]:
    """What ``folder`` lacks to load as a ``kind`` ("base" or "controlnet") model of ``family``."""
    if kind == "base":
        return _base_folder_problems(folder, family)
    return model_folder_problems(folder)


_WHAT = {"base": "a base-model folder (model_index.json + component folders)",
         "vae": "an AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors)",
         "controlnet": "a ControlNet folder (config.json + diffusion_pytorch_model.safetensors)"}


def wanted_models(config: ControlNetConfig) -> list[WantedModel]:
    """The base model, then each ControlNet, of ``config``."""
    def model(field: str, name: str, kind: str) -> WantedModel:
        return WantedModel(field, name, _WHAT[kind],
                           lambda folder: _folder_problems(folder, kind, config.family))

    wanted = [model("backend.controlnet.base_model", config.base_model, "base")] + [
        model(f"backend.controlnet.controlnets.{i}.model", unit.model, "controlnet")
        for i, unit in enumerate(config.controlnets)]
    if config.vae is not None:
        wanted.append(model("backend.controlnet.vae", config.vae, "vae"))
    return wanted


def check_models_available(config: ControlNetConfig) -> None:
    """Make sure every model of ``config`` can be loaded, without loading any.

    A model is available when it is a local folder with the files diffusers needs, or a hub id
    whose snapshot is in the Hugging Face cache (``HF_HOME``/``HF_HUB_CACHE``), or - when the
    hub may be used (not ``local_files_only``, no ``HF_HUB_OFFLINE``) - a hub id the hub serves
    (see :mod:`synthgen.generate.model_check`). Raises one
    :class:`~synthgen.errors.MissingModelError` whose
    single-line message names every missing model and how to fetch it. Also runs
    :func:`check_config`.
    """
    check_config(config)
    offline = hub_offline(config.local_files_only)
    missing = missing_models(wanted_models(config), offline)
    if missing:
        raise missing_model_error("the controlnet backend", missing,
                                  f"{OFFLINE_SWITCHES} or backend.controlnet.local_files_only"
                                  if offline else None)
