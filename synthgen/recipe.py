"""Recipe schema: every knob of a run, typed, with units and defaults (every section, sequences too).

One module on purpose (over 500 lines): the sections share one base type, one range check and one
set of field types, and a reader finds any recipe key here.

A recipe is a YAML file validated by pydantic. Command-line overrides use dotted keys
(``camera.fov_deg=[40,60]``), merged by OmegaConf before validation. A user mistake raises
:class:`RecipeError` whose message names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from synthgen.errors import UserError

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_from_dict", "recipe_hash"]


class RecipeError(UserError):
    """A recipe (or an override) the user wrote is invalid; the message says how to fix it."""


Range = Annotated[tuple[float, float], Field(description="[low, high], inclusive")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_range(name: str, value: tuple[float, float] | None, lo: float, hi: float) -> None:
    if value is None:
        return
    a, b = value
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name} must satisfy {lo} <= low <= high <= {hi}, got {list(value)}")


# --- weighted distributions ---------------------------------------------------------------------------
# A difficulty attribute takes, besides its plain [low, high] range (drawn uniformly),
# a weighted histogram ``{bins: [e0, e1, ...], weights: [w0, ...]}`` (bin k = [e_k, e_k+1),
# uniform inside) or a mixture ``{mixture: [{range: [a, b], weight: w}, {bins: ..., weights: ...,
# weight: w}, ...]}``, which is resolved to the one histogram over the union of its components' edges
# (a mixture of piecewise-uniform densities is one). Either is drawn with ONE uniform number from the
# attribute's usual stream (inverse CDF), so a weighted attribute shifts no other draw. Samples record
# the bin each weighted attribute was drawn from (``labels["bins"]``).


class Histogram(_Strict):
    """A piecewise-uniform distribution: bin k = [bins[k], bins[k+1]) with probability weights[k]."""

    bins: list[float] = Field(..., description="bin edges, strictly increasing, at least 2")
    weights: list[float] = Field(..., description="one non-negative weight per bin (normalised when "
                                 "drawn), not all zero")

    @model_validator(mode="after")
    def _shape(self) -> "Histogram":
        edges, weights = self.bins, self.weights
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"bins={edges}: needs at least 2 strictly increasing edges, e.g. [0, 10, 20]")
        if len(weights) != len(edges) - 1:
            raise ValueError(f"weights={weights}: needs one weight per bin ({len(edges) - 1} for bins={edges})")
        if any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(f"weights={weights}: must be >= 0 and not all zero")
        return self

    @property
    def probabilities(self) -> list[float]:
        total = float(sum(self.weights))
        return [w / total for w in self.weights]


def _mixture_to_histogram(components: Any) -> dict[str, list[float]]:
    """A mixture's components (ranges or histograms, each with a ``weight``) -> one histogram dict."""
    if not isinstance(components, list) or not components:
        raise ValueError(f"mixture={components!r}: needs a non-empty list of components such as "
                         "{range: [0, 10], weight: 1}")
    parts = []
    for i, comp in enumerate(components):
        if not isinstance(comp, dict) or set(comp) - {"range", "bins", "weights", "weight"} or                 ("range" in comp) == ("bins" in comp):
            raise ValueError(f"mixture[{i}]={comp!r}: write {{range: [low, high], weight: w}} or "
                             "{bins: [...], weights: [...], weight: w}")
        weight = comp.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"mixture[{i}].weight={weight!r}: must be a number > 0")
        if "range" in comp:
            r = comp["range"]
            if not (isinstance(r, (list, tuple)) and len(r) == 2 and r[0] < r[1]):
                raise ValueError(f"mixture[{i}].range={r!r}: write [low, high] with low < high")
            hist = Histogram(bins=list(r), weights=[1.0])
        else:
            hist = Histogram(bins=comp["bins"], weights=comp.get("weights", []))
        parts.append((float(weight), hist))
    edges = sorted({float(e) for _, h in parts for e in h.bins})
    density = np.zeros(len(edges) - 1)
    mids = (np.asarray(edges[:-1]) + np.asarray(edges[1:])) / 2.0
    for weight, h in parts:
        e, p = np.asarray(h.bins), np.asarray(h.probabilities)
        k = np.searchsorted(e, mids, side="right") - 1
        inside = (k >= 0) & (k < len(p))
        density[inside] += weight * p[k[inside]] / np.diff(e)[k[inside]]
    return {"bins": edges, "weights": (density * np.diff(edges)).tolist()}


def _weighted(value: Any) -> Any:
    """Before-validator of a weighted attribute: a range stays a range; a mixture becomes a histogram."""
    if isinstance(value, dict):
        if set(value) == {"mixture"}:
            return Histogram(**_mixture_to_histogram(value["mixture"]))
        if set(value) != {"bins", "weights"}:
            raise ValueError(f"got {value!r}; write [low, high], {{bins: [edges...], weights: [...]}} "
                             "or {mixture: [{range: [low, high], weight: w}, ...]}")
        return Histogram(**value)
    return value


WeightedRange = Annotated[Range | Histogram, BeforeValidator(_weighted),
                          Field(description="[low, high] (uniform), a histogram or a mixture")]
WeightedCount = Annotated[tuple[int, int] | Histogram, BeforeValidator(_weighted),
                          Field(description="[low, high] (uniform integers), or a histogram over "
                                "integer edges (bin [a, b) gives a..b-1 uniformly)")]


def dist_bounds(spec: tuple[float, float] | Histogram) -> tuple[float, float]:
    """(low, high) support of a range or histogram."""
    return (spec.bins[0], spec.bins[-1]) if isinstance(spec, Histogram) else (spec[0], spec[1])


def draw_weighted(rng: np.random.Generator, spec: tuple[float, float] | Histogram) -> tuple[float, int | None]:
    """One value of a weighted attribute and its bin (None for a plain range).

    A range is ``rng.uniform(low, high)`` (the draw every recipe made before weights existed); a
    histogram takes one ``rng.random()`` through its inverse CDF.
    """
    if not isinstance(spec, Histogram):
        return float(rng.uniform(*spec)), None
    u = float(rng.random())
    cdf = np.cumsum(spec.probabilities)
    k = int(min(np.searchsorted(cdf, u, side="right"), len(cdf) - 1))
    while spec.weights[k] <= 0:  # u at the top edge of the last non-empty bin
        k -= 1
    below = cdf[k - 1] if k else 0.0
    frac = min(max((u - below) / (cdf[k] - below), 0.0), 1.0)
    low, high = spec.bins[k], spec.bins[k + 1]
    return float(min(low + frac * (high - low), np.nextafter(high, low))), k


def draw_count(rng: np.random.Generator, spec: tuple[int, int] | Histogram) -> tuple[int, int | None]:
    """An integer attribute (people per image): ``integers(low, high + 1)`` for a range, else the
    floor of a histogram draw over integer edges."""
    if not isinstance(spec, Histogram):
        return int(rng.integers(spec[0], spec[1] + 1)), None
    value, k = draw_weighted(rng, spec)
    return int(np.floor(value)), k


def _check_weighted(name: str, spec: Any, lo: float, hi: float, integer: bool = False) -> None:
    if isinstance(spec, Histogram):
        low, high = dist_bounds(spec)
        if not (lo <= low and high <= hi + (1 if integer else 0)):
            raise ValueError(f"{name}: histogram edges {spec.bins} must lie in [{lo}, {hi + (1 if integer else 0)}]")
        if integer and any(float(e) != int(e) for e in spec.bins):
            raise ValueError(f"{name}: histogram edges {spec.bins} must be whole numbers (bin [a, b) = a..b-1)")
        return
    _check_range(name, spec, lo, hi)


class ImageConfig(_Strict):
    width: int = Field(512, ge=64, le=4096, description="image width in pixels")
    height: int = Field(512, ge=64, le=4096, description="image height in pixels")

    @model_validator(mode="after")
    def _multiple_of_8(self) -> "ImageConfig":
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                raise ValueError(f"image.{name} must be a multiple of 8 (diffusion VAEs need it), "
                                 f"got {getattr(self, name)}")
        return self


class ShapeConfig(_Strict):
    """Body shape. Anny phenotypes are in [0, 1]; age is in years."""

    age_years: WeightedRange = Field((1.0, 90.0), description="uniform range of (morphological) age, years")
    gender: WeightedRange = Field((0.0, 1.0), description="Anny gender phenotype range: 0 male, 1 female")
    height: WeightedRange | None = Field(None, description="Anny height phenotype range in [0,1]; "
                                 "null = WHO-calibrated distribution given age and gender")
    weight: WeightedRange | None = Field(None, description="Anny weight phenotype range; null = calibrated")
    muscle: WeightedRange | None = Field(None, description="Anny muscle phenotype range; null = calibrated")
    proportions: WeightedRange | None = Field(None, description="Anny proportions range; null = calibrated")
    betas_mean: float = Field(0.0, description="SMPL family: mean of each beta")
    betas_sd: float = Field(1.0, ge=0.0, description="SMPL family: standard deviation of each beta")
    num_betas: int = Field(10, ge=1, le=300, description="SMPL family: number of shape coefficients")

    @model_validator(mode="after")
    def _ranges(self) -> "ShapeConfig":
        _check_weighted("age_years", self.age_years, 0.0, 120.0)
        for name in ("gender", "height", "weight", "muscle", "proportions"):
            _check_weighted(name, getattr(self, name), 0.0, 1.0)
        return self


class PoseConfig(_Strict):
    """Body pose: perturbed base poses from the library and/or poses from user files."""

    library: dict[str, float] = Field(
        default_factory=lambda: {"standing": 2.0, "walking": 2.0, "arms_raised": 1.0, "t_pose": 0.5,
                                 "sitting": 1.0, "crouching": 1.0, "kneeling": 0.5, "reaching": 1.0,
                                 "running": 1.0, "waving": 1.0},
        description="base pose name -> relative weight (see synthgen.subjects.poses.BASE_POSES)")
    noise_deg: float = Field(8.0, ge=0.0, le=45.0, description="sd of per-joint perturbation, degrees")
    files: list[str] = Field(default_factory=list, description="AMASS/BEDLAM-style .npz pose files "
                             "(key 'poses' or 'body_pose', axis-angle, SMPL joint order)")
    file_fraction: float = Field(0.0, ge=0.0, le=1.0, description="fraction of samples posed from files")
    yaw_deg: Range = Field((-180.0, 180.0), description="body heading about the vertical, degrees")


ANIMAL_MODELS = ("quadruped", "smal")
OBJECT_MODELS = ("builtin", "mesh")
SMPL_MODELS = ("smpl", "smplh", "smplx")
DEFAULT_MODEL = {"human": "anny", "animal": "quadruped", "object": "builtin"}
AxisName = Literal["auto", "+x", "-x", "+y", "-y", "+z", "-z"]


class SpeciesShape(_Strict):
    """A recipe Gaussian over one species family's betas (used where no cluster data covers it)."""

    mean: float | list[float] = Field(0.0, description="mean of each beta (one value, or one per beta)")
    sd: float | list[float] = Field(1.0, description="standard deviation of each beta (one or per beta)")


class AnimalConfig(_Strict):
    """Quadrupeds (subject.kind=animal): SMAL-family files or the embedded stand-in quadruped.

    Shapes: per species family, a Gaussian from the model's cluster data (``cluster_means`` /
    ``cluster_cov``, SMAL's smal_CVPR2017_data.pkl layout) or from ``species_shapes``, redrawn
    until every |beta| <= ``max_abs_beta`` (GenZoo's plausibility bound). Poses: library poses
    perturbed within joint limits, or rows of ``pose_files``.
    """

    species: dict[str, float] = Field(default_factory=dict, description="species family -> relative "
                                      "weight; empty = every family the model knows, equally")
    cluster_file: str | None = Field(None, description="smal_CVPR2017_data.pkl-style file (or its .npz) "
                                     "with cluster_means/cluster_cov; null = clusters inside the model "
                                     "file when present")
    family_names: list[str] | None = Field(None, description="names of the cluster families in file "
                                           "order; null = SMAL's cat, dog, horse, cow, hippo")
    species_shapes: dict[str, SpeciesShape] = Field(default_factory=dict, description="recipe Gaussians "
                                                    "per species family (override cluster data)")
    num_betas: int | None = Field(None, ge=1, le=300, description="shape coefficients used; null = all "
                                  "the model has")
    betas_mean: float = Field(0.0, description="fallback Gaussian mean (species without clusters)")
    betas_sd: float = Field(1.0, ge=0.0, description="fallback Gaussian standard deviation")
    max_abs_beta: float = Field(10.0, gt=0.0, description="plausibility bound |beta_i| <= this (GenZoo: 10); "
                                "a draw outside is redrawn, up to 100 times, then clipped")
    library: dict[str, float] = Field(
        default_factory=lambda: {"standing": 2.0, "walking": 2.0, "trotting": 1.0, "galloping": 0.5,
                                 "sitting": 1.0, "lying": 1.0, "head_down": 0.5, "looking_back": 0.5},
        description="base pose -> relative weight (synthgen.subjects.animal_poses.BASE_POSES)")
    noise_deg: float = Field(6.0, ge=0.0, le=45.0, description="sd of per-joint perturbation, degrees")
    pose_files: list[str] = Field(default_factory=list, description=".npz pose sets: key 'poses' "
                                  "(N, 3*J) axis-angle in the model's joint order (root ignored)")
    pose_file_fraction: float = Field(0.0, ge=0.0, le=1.0, description="fraction of samples posed "
                                      "from pose_files")
    yaw_deg: Range = Field((-180.0, 180.0), description="heading about the vertical, degrees")
    joint_names: list[str] | None = Field(None, description="SMAL names of the model's joints when its "
                                          "skeleton is not SMAL's 33/35-joint one")
    keypoints_file: str | None = Field(None, description=".npz keypoint regressor for the 26 Animal3D "
                                       "keypoints: vertex_weights (26, V) and/or joint_weights (26, J), "
                                       "or vertex_ids (26,); null = the model's own or a geometric one")
    convert_pickle: bool = Field(False, description="opt-in: read a .pkl model/cluster file once with a "
                                 "restricted unpickler (numpy arrays only) and write a .npz beside it "
                                 "(or in the cache); later runs read only the .npz")


class ObjectConfig(_Strict):
    """Rigid CAD objects (subject.kind=object), normalised to a box diagonal of ``size``."""

    paths: list[str] = Field(default_factory=list, description="mesh files (obj, glb, gltf, ply, stl, "
                             "off) or folders: ShapeNet (synset/model/models/model_normalized.obj) or "
                             "Objaverse-style (class/uid.glb)")
    index_csv: str | None = Field(None, description="3D-DST-style CSV: class,path[,azimuth,elevation,"
                                  "model_id] (paths relative to the CSV; angles align the model's front)")
    classes: dict[str, float] = Field(default_factory=dict, description="class -> relative weight; "
                                      "empty = every class found, equally")
    up_axis: AxisName = Field("auto", description="the mesh files' up axis; auto = +y (ShapeNet, glTF)")
    front_axis: AxisName = Field("auto", description="the mesh files' front axis; auto = -z for "
                                 "ShapeNet/OBJ, +z for glTF/GLB")
    size: float = Field(1.0, gt=0.0, le=100.0, description="bounding-box diagonal after normalisation, "
                        "metres (PASCAL3D+/ShapeNet unit normalisation = 1)")
    parts: Literal["single", "submesh"] = Field("submesh", description="part ids: one part, or one per "
                                                "submesh (scene node) of the file")


class SubjectConfig(_Strict):
    kind: Literal["human", "animal", "object"] = "human"
    model: Literal["anny", "smpl", "smplh", "smplx", "quadruped", "smal", "builtin", "mesh"] = Field(
        "anny", description="human: anny (embedded) or smpl/smplh/smplx (licensed files); animal: "
        "quadruped (embedded stand-in) or smal (your SMAL-family file); object: builtin (embedded "
        "procedural meshes) or mesh (your files, see subject.object). Default: the kind's embedded one")
    model_path: str | None = Field(None, description="SMPL family: folder holding smpl/SMPL_NEUTRAL.pkl "
                                   "(or .npz), or the model file itself; smal: the SMAL-family model "
                                   "file (.npz, or .pkl with animal.convert_pickle)")
    smpl_gender: Literal["neutral", "male", "female"] = "neutral"
    shape: ShapeConfig = Field(default_factory=ShapeConfig)
    pose: PoseConfig = Field(default_factory=PoseConfig)
    animal: AnimalConfig = Field(default_factory=AnimalConfig, description="kind=animal settings")
    object: ObjectConfig = Field(default_factory=ObjectConfig, description="kind=object settings")

    @model_validator(mode="before")
    @classmethod
    def _default_model_for_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "model" not in data and data.get("kind") in DEFAULT_MODEL:
            data = dict(data, model=DEFAULT_MODEL[data["kind"]])
        if "kind" not in data and data.get("model") in ANIMAL_MODELS + OBJECT_MODELS:
            data = dict(data, kind="animal" if data["model"] in ANIMAL_MODELS else "object")
        return data

    @model_validator(mode="after")
    def _kind_matches_model(self) -> "SubjectConfig":
        allowed = {"human": ("anny",) + SMPL_MODELS, "animal": ANIMAL_MODELS, "object": OBJECT_MODELS}
        if self.model not in allowed[self.kind]:
            raise ValueError(f"subject.model={self.model} does not make subject.kind={self.kind} "
                             f"subjects; use one of {list(allowed[self.kind])} (or change subject.kind)")
        return self

    @model_validator(mode="after")
    def _smpl_needs_path(self) -> "SubjectConfig":
        if self.model in SMPL_MODELS and not self.model_path:
            site = {"smpl": "smpl", "smplh": "mano", "smplx": "smpl-x"}[self.model]
            raise ValueError(f"subject.model={self.model} needs subject.model_path: the folder with your "
                             f"licensed {self.model.upper()} files (get them from https://{site}.is.tue.mpg.de)")
        if self.model == "smal" and not self.model_path:
            raise ValueError("subject.model=smal needs subject.model_path: your SMAL-family model file "
                             "(e.g. smal_CVPR2017.pkl from https://smal.is.tue.mpg.de, converted once "
                             "with `python -m synthgen.subjects.smal_files convert FILE.pkl`), or use "
                             "subject.model=quadruped (embedded)")
        if self.model == "mesh" and not (self.object.paths or self.object.index_csv):
            raise ValueError("subject.model=mesh needs subject.object.paths (mesh files or ShapeNet/"
                             "Objaverse folders) or subject.object.index_csv; or use subject.model=builtin")
        return self


class ViewpointConfig(_Strict):
    """3D-DST / PASCAL3D+ viewpoint cameras (camera.mode=viewpoint), looking at the subject's box centre.

    azimuth: 0 = in front of the subject (on its -Y side), increasing counter-clockwise seen from
    above; elevation = 90 - polar; theta = in-plane rotation (image turns counter-clockwise).
    """

    azimuth: Literal["uniform", "front"] = Field("uniform", description="uniform over azimuth_deg, or "
                                                 "uniform over the front arc [-front_arc_deg/2, +front_arc_deg/2]")
    azimuth_deg: Range = Field((0.0, 360.0), description="azimuth range for azimuth=uniform, degrees")
    front_arc_deg: float = Field(90.0, gt=0.0, le=360.0, description="width of the front arc, degrees")
    polar_mean_deg: float = Field(90.0, ge=0.0, le=180.0, description="polar angle mean (90 = level)")
    polar_sd_deg: float = Field(30.0, ge=0.0, le=180.0, description="polar angle sd (truncated normal)")
    polar_range_deg: Range = Field((5.0, 175.0), description="truncation of the polar angle, degrees")
    distance: Literal["normal", "fixed"] = Field("normal", description="truncated normal or fixed")
    distance_mean: float = Field(2.0, gt=0.0, description="camera distance to the box centre")
    distance_sd: float = Field(0.3, ge=0.0, description="distance sd (distance=normal)")
    distance_range: Range = Field((1.2, 4.0), description="distance truncation")
    distance_relative: bool = Field(True, description="distances in units of the subject's box diagonal "
                                    "(unit-normalised objects: metres); false = metres")
    theta_deg: Range = Field((0.0, 0.0), description="in-plane rotation range (uniform), degrees")
    focal_mm: float | None = Field(35.0, gt=0.0, description="lens focal length, mm (3D-DST: 35); "
                                   "null = draw camera.fov_deg")
    sensor_mm: float = Field(36.0, gt=0.0, description="sensor width, mm (Blender's default 36)")
    principal_jitter: float = Field(0.0, ge=0.0, le=0.3, description="max principal-point offset from "
                                    "the image centre (where the box centre projects), fraction of size")

    @model_validator(mode="after")
    def _ranges(self) -> "ViewpointConfig":
        _check_range("polar_range_deg", self.polar_range_deg, 0.0, 180.0)
        _check_range("theta_deg", self.theta_deg, -180.0, 180.0)
        _check_range("azimuth_deg", self.azimuth_deg, -360.0, 720.0)
        if self.distance_range[0] <= 0 or self.distance_range[0] > self.distance_range[1]:
            raise ValueError(f"distance_range must satisfy 0 < low <= high, got {list(self.distance_range)}")
        return self


class CameraConfig(_Strict):
    """Pinhole camera framing the subject. Angles in degrees, distances in metres."""

    mode: Literal["frame", "viewpoint"] = Field("frame", description="frame = fit the subject to "
                                                "subject_fraction (HumanWild/GenZoo style); viewpoint "
                                                "= 3D-DST azimuth/polar/distance/theta (camera.viewpoint)")
    viewpoint: ViewpointConfig = Field(default_factory=ViewpointConfig)

    fov_deg: WeightedRange = Field((30.0, 75.0), description="vertical field of view range, degrees "
                           "(wide = close range with strong perspective)")
    subject_fraction: WeightedRange = Field((0.55, 0.9), description="subject's projected height / image height")
    elevation_deg: WeightedRange = Field((-10.0, 30.0), description="camera elevation above the subject centre")
    high_view_prob: float = Field(0.1, ge=0.0, le=1.0, description="probability of a high view")
    high_elevation_deg: Range = Field((35.0, 70.0), description="elevation range of high views")
    ground_view_prob: float = Field(0.1, ge=0.0, le=1.0, description="probability of a ground-level view")
    ground_elevation_deg: Range = Field((-25.0, -10.0), description="elevation range of ground views")
    azimuth_deg: WeightedRange = Field((-180.0, 180.0), description="camera azimuth around the subject")
    roll_sd_deg: float = Field(3.0, ge=0.0, le=45.0, description="sd of camera roll, degrees")
    center_jitter: float = Field(0.1, ge=0.0, le=0.5, description="max offset of the subject centre "
                                 "from the image centre, as a fraction of image size")

    @model_validator(mode="after")
    def _ranges(self) -> "CameraConfig":
        _check_weighted("fov_deg", self.fov_deg, 5.0, 150.0)
        _check_weighted("subject_fraction", self.subject_fraction, 0.05, 1.5)
        if isinstance(self.azimuth_deg, Histogram):  # a plain range is not checked here
            _check_weighted("azimuth_deg", self.azimuth_deg, -360.0, 360.0)
        for name in ("elevation_deg", "high_elevation_deg", "ground_elevation_deg"):
            _check_weighted(name, getattr(self, name), -89.0, 89.0)
        return self


LabelFormat = Literal["synthgen", "hmr2"]
LayerName = Literal["normal", "depth", "mask", "parts", "edges", "skeleton", "instance", "shaded"]
NormalConvention = Literal["opengl", "bae", "opencv", "omnidata"]
NormalBackground = Literal["black", "grey", "facing", "ground"]
EdgesSource = Literal["normals", "shaded"]
SceneLayer = Literal["normal", "depth", "parts", "edges", "shaded"]
DepthForm = Literal["minmax", "minmax_25", "inverse", "metric"]


class RenderConfig(_Strict):
    backend: Literal["auto", "gl", "torch"] = Field(
        "auto", description="gl = moderngl/EGL, torch = pure-pip z-buffer, auto = gl when EGL works")
    canny_low: int = Field(100, ge=0, le=1000, description="Canny lower threshold (edges layer)")
    canny_high: int = Field(200, ge=0, le=1000, description="Canny upper threshold (edges layer)")
    normal_convention: NormalConvention = Field(
        "opengl", description="normal layer axes: opengl = x right, y up, z toward the viewer "
        "(facing the camera encodes as (128, 128, 255)); bae = x left, y up, z toward the viewer "
        "(Normal-BAE / ScanNet, what control_v11p_sd15_normalbae saw); omnidata = x left, y up, "
        "z away from the viewer (HumanWild's SDXL normal ControlNet: facing the camera is "
        "(128, 128, 0)); opencv = raw camera axes")
    normal_background: NormalBackground = Field(
        "black", description="normal layer background: black = 0; grey = 127 (HumanWild's "
        "no-surface value); facing = a surface facing the camera, as a normal estimator writes "
        "for a wall behind the subject (Normal-BAE: (127, 127, 255)); ground = the ground plane "
        "z = 0 seen by the camera behind the subject (HumanWild's scene-normal input), grey where "
        "no ground is seen")
    scene_in: list[SceneLayer] = Field(
        default_factory=lambda: ["normal", "depth", "parts", "edges", "shaded"],
        description="the layers that show the scene geometry (scene.geometry); the others show the "
        "subjects only, as with no scene (e.g. [depth] with normal_background: ground keeps "
        "HumanWild's normal input while depth sees the room)")
    edges_source: EdgesSource = Field(
        "normals", description="what the edges layer is Canny of: normals = the encoded normal "
        "layer; shaded = a shaded render (the shaded layer: faces coloured by their normal, lit "
        "by an ambient term and a headlight, as GenZoo's MeshRenderer)")


class ShadedConfig(_Strict):
    background: Literal["procedural", "folder"] = "procedural"
    background_dir: str | None = Field(None, description="folder of background images (jpg/png)")

    @model_validator(mode="after")
    def _dir(self) -> "ShadedConfig":
        if self.background == "folder" and not self.background_dir:
            raise ValueError("backend.shaded.background=folder needs backend.shaded.background_dir")
        return self


ControlLayer = Literal["normal", "depth", "edges", "skeleton", "mask"]


class ControlEncoding(_Strict):
    """How one ControlNet's layer is encoded: the form that ControlNet was trained on.

    ``null`` fields take the stored layer's form (``render.*``); a unit whose resolved encoding
    differs from the stored layer's also gets its exact input stored as ``control_<i>.png``.
    """

    normal: NormalConvention | None = Field(None, description="layer=normal: axes (see "
                                            "render.normal_convention); null = render's")
    background: NormalBackground | None = Field(None, description="layer=normal: background (see "
                                                "render.normal_background); null = render's")
    depth: DepthForm = Field("minmax", description="layer=depth: minmax = GenZoo's 1 - (d - min) "
                             "/ (max - min) over the foreground, rint(255 x), background 0 (the "
                             "foreground spans 0..255); minmax_25 = the same squeezed to 25..255; "
                             "inverse = min-max normalised inverse depth (MiDaS-style disparity); "
                             "metric = 255 (1 - z / max_depth_m), clipped, background 0")
    max_depth_m: float = Field(10.0, gt=0.0, description="depth=metric: the depth that maps to 0")
    edges: EdgesSource | None = Field(None, description="layer=edges: Canny of normals or of the "
                                      "shaded render; null = render.edges_source")
    resolution: int | None = Field(None, ge=32, le=4096, description="short side at which the input "
                                   "is computed (an annotator's detect resolution, e.g. 512 for the "
                                   "lllyasviel v1.1 annotators), then resized to the image with "
                                   "INTER_LINEAR; null = at the image size")


class ControlNetUnit(_Strict):
    """One ControlNet bound to one rendered layer and its encoding."""

    model: str = Field(..., description="Hugging Face id or local folder of the ControlNet weights")
    layer: ControlLayer = Field(..., description="rendered layer fed to it (depth = normalised "
                                "depth, edges = Canny, skeleton = OpenPose-18); see encoding")
    encoding: ControlEncoding = Field(default_factory=ControlEncoding,
                                      description="how the layer is encoded for this ControlNet")
    scale: float = Field(1.0, ge=0.0, le=2.0, description="controlnet_conditioning_scale")
    start: float = Field(0.0, ge=0.0, le=1.0, description="control_guidance_start (fraction of steps)")
    end: float = Field(1.0, ge=0.0, le=1.0, description="control_guidance_end (fraction of steps)")

    def resolved_encoding(self, render: "RenderConfig") -> dict[str, Any]:
        """The encoding this unit's ControlNet receives, with render's defaults filled in."""
        enc = self.encoding
        at = {"resolution": enc.resolution} if enc.resolution else {}
        if self.layer == "normal":
            return {"layer": "normal", "normal": enc.normal or render.normal_convention,
                    "background": enc.background or render.normal_background} | at
        if self.layer == "depth":
            out = {"layer": "depth", "depth": enc.depth}
            return out | ({"max_depth_m": enc.max_depth_m} if enc.depth == "metric" else {}) | at
        if self.layer == "edges":
            return {"layer": "edges", "edges": enc.edges or render.edges_source,
                    "canny": [render.canny_low, render.canny_high]} | at
        return {"layer": self.layer} | at


Auto = Literal["auto"]


class SpeedConfig(_Strict):
    """How the controlnet backend keeps a GPU busy. ``auto`` = on when running on CUDA (or, for the
    VAE options, at 1024x1024 and above); every option leaves sample i's seeds and inputs alone
    (fused/compiled kernels round differently from eager ones, so they are part of the recipe)."""

    channels_last: bool | Auto = Field("auto", description="channels_last memory layout of the "
                                       "denoiser, ControlNets and VAE (faster convolutions on GPUs)")
    fuse_qkv: bool | Auto = Field("auto", description="fuse the attention query/key/value projections "
                                  "of the denoiser, ControlNets and VAE into one matmul")
    compile: bool = Field(False, description="torch.compile the denoiser, the ControlNets and the VAE "
                          "decoder (fixed shapes: one warm-up call per process, minutes the first time, "
                          "seconds once compile_cache holds the kernels)")
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode. The device stages run in the process's main "
        "thread (CPU stages in a prefetch thread or loader processes); the CUDA-graph modes "
        "(reduce-overhead, max-autotune) are not offered: not yet run on a GPU, and a graph replay "
        "reuses its output buffers")
    compile_cache: str | None = Field("~/.cache/synthgen/inductor", description="persistent "
                                      "TORCHINDUCTOR_CACHE_DIR shared by runs and ranks; null = torch's "
                                      "default (a temporary folder)")
    vae_slicing: bool | Auto = Field("auto", description="decode the batch one image at a time (same "
                                     "pixels, less memory); auto = at 1024x1024 and above")
    vae_tiling: bool | Auto = Field("auto", description="decode in overlapping tiles when the image is "
                                    "larger than the VAE's own sample size (less memory; tiles blend); "
                                    "auto = at 1024x1024 and above")
    oom_halving: bool = Field(True, description="a CUDA out-of-memory error halves the batch and "
                              "retries (logged); false = the error stops the run")


class ControlNetConfig(_Strict):
    """diffusers ControlNet pipelines. Models come from a Hugging Face id or a local folder."""

    family: Literal["sd15", "sdxl", "flux"] = Field("sd15", description="pipeline family")
    base_model: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                            description="Hugging Face id or local folder of the base model")
    controlnets: list[ControlNetUnit] = Field(
        default_factory=lambda: [ControlNetUnit(model="lllyasviel/control_v11p_sd15_normalbae",
                                                layer="normal", scale=1.0)],
        min_length=1, description="one or more ControlNets (several = multi-ControlNet)")
    vae: str | None = Field(None, description="Hugging Face id or local folder of an AutoencoderKL "
                            "that replaces the base model's VAE (any family), e.g. "
                            "madebyollin/sdxl-vae-fp16-fix for SDXL in fp16; null = the base's own")
    scheduler: Literal["default", "unipc", "ddim", "euler", "euler_a", "dpm"] = "unipc"
    eta: float | None = Field(None, ge=0.0, le=1.0, description="DDIM eta (scheduler: ddim only): "
                              "0 = deterministic DDIM, 1 = stochastic (3D-DST); null = the "
                              "pipeline's default 0")
    long_prompts: Literal["compel", "error"] = Field(
        "compel", description="prompts longer than the text encoder's 77 tokens (sd15, sdxl): "
        "compel = encode them whole in 77-token chunks with the compel library (HumanWild); "
        "error = fail the sample. Never truncated. (flux: T5 reads 512 tokens)")
    steps: int = Field(20, ge=1, le=1000, description="denoising steps")
    guidance: float = Field(7.5, ge=0.0, le=50.0, description="classifier-free guidance scale")
    dtype: Literal["fp32", "fp16", "bf16"] = Field("fp16", description="weights dtype on GPU "
                                                   "(CPU runs fall back to fp32 unless bf16)")
    batch_size: int = Field(4, ge=1, le=256, description="images per diffusion call")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto = cuda when available")
    local_files_only: bool = Field(False, description="never contact the hub (HF_HUB_OFFLINE=1 "
                                   "does the same)")
    speed: SpeedConfig = Field(default_factory=SpeedConfig, description="GPU speed options")

    @model_validator(mode="after")
    def _windows(self) -> "ControlNetConfig":
        for i, unit in enumerate(self.controlnets):
            if unit.start >= unit.end:
                raise ValueError(f"controlnets.{i}: start ({unit.start}) must be below end ({unit.end})")
            if unit.layer not in ("normal", "depth", "edges") and unit.encoding != ControlEncoding():
                raise ValueError(f"controlnets.{i}.encoding: layer {unit.layer} has no encoding "
                                 "choices; remove the encoding")
        if self.eta is not None and self.scheduler != "ddim":
            raise ValueError(f"eta={self.eta} needs scheduler: ddim (eta is DDIM's noise "
                             f"weight), got scheduler: {self.scheduler}; set scheduler: ddim or eta: null")
        return self


class BackendConfig(_Strict):
    kind: Literal["shaded", "controlnet", "none"] = Field(
        "shaded", description="image backend: shaded = weight-free CG image; controlnet = "
        "diffusers ControlNet diffusion; none = labels and conditioning layers only")
    shaded: ShadedConfig = Field(default_factory=ShadedConfig)
    controlnet: ControlNetConfig = Field(default_factory=ControlNetConfig)


class PromptConfig(_Strict):
    """Text prompts: templates filled from each sample's attributes and pose, or a list file."""

    templates: str | None = Field(None, description="YAML of prompt templates and slot values; "
                                  "null = the embedded assets/prompts/human.yaml")
    prompts_file: str | None = Field(None, description="text file, one prompt per line; sample i "
                                     "draws a line (overrides the templates)")
    negative: str = Field("lowres, bad anatomy, bad hands, missing fingers, extra digit, cropped, "
                          "worst quality, low quality, blurry, deformed",
                          description="negative prompt")
    describe_pose: bool = Field(True, description="append a pose description computed from the "
                                "3D joints")


class SamConfig(_Strict):
    """HumanWild's SAM check: SAM, prompted with the rendered box (and keypoints), must find the
    subject where it was rendered. One mask per image (box prompts are unambiguous).

    What the thresholds catch: ``min_iou`` 0.7 rejects a subject that the image lost or moved
    (a missing or extra limb, a second person merged in, a body shrunk or shifted from its
    labels: each takes a large bite of the IoU); ``min_keypoints_in_mask`` 0.8 rejects limbs the
    image put elsewhere while the torso still overlaps (IoU stays high, but hands and feet fall
    outside SAM's mask). Neither catches a body turned front-to-back inside its silhouette: that
    is what matching each ControlNet's normal encoding prevents. Scores are kept in labels and
    shard sidecars, so a run can be re-thresholded later (``filter.write_rejected``).
    """

    model: str = Field("facebook/sam-vit-base", description="Hugging Face id or local folder of a "
                       "transformers SamModel")
    min_iou: float = Field(0.7, ge=0.0, le=1.0, description="reject when IoU(SAM mask, render mask) "
                           "is below this (a lost, shrunk, shifted or merged subject)")
    min_keypoints_in_mask: float = Field(0.8, ge=0.0, le=1.0, description="reject when the fraction "
                                         "of visible keypoints inside SAM's mask is below this "
                                         "(limbs drawn elsewhere)")
    point_prompts: bool = Field(True, description="also prompt SAM with the visible keypoints")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="SAM's image encoder "
                                                           "(its ViT, most of SAM's time); auto = fp16 on "
                                                           "CUDA, fp32 on CPU. The prompt encoder and mask "
                                                           "decoder always run in fp32")
    batch_size: int | None = Field(None, ge=1, le=1024, description="images per SAM image-encoder call "
                                   "(a CUDA out-of-memory error halves it, like the diffusion batch); "
                                   "null = the image backend's batch_size (4 for CPU backends)")
    group_policy: Literal["all", "drop"] = Field("all", description="several people per image "
                                                 "(scene.people): SAM checks each person (its box and "
                                                 "keypoints); all = reject the image when anyone fails; "
                                                 "drop = keep it and move the failing people's labels "
                                                 "to dropped_instances (rejected only if nobody passes)")


class FilterConfig(_Strict):
    """Reject images that drifted from their labels. Cheap checks run first."""

    sam: SamConfig | None = Field(None, description="SAM alignment filter; null = off")
    min_std: float = Field(4.0, ge=0.0, description="reject near-constant images: pixel standard "
                           "deviation (0-255 scale) below this")
    max_black_fraction: float = Field(0.95, ge=0.0, le=1.0, description="reject images whose "
                                      "fraction of near-black pixels exceeds this (NSFW-blanked)")
    write_rejected: bool = Field(False, description="also write rejected samples to "
                                 "DIR/rejected/ shards for inspection (and re-thresholding)")
    max_attempts: int = Field(3, ge=1, le=100, description="draws per sample index: a rejected "
                              "sample is drawn again from the next attempt's seeds (recorded as "
                              "labels.attempt) until one is accepted or this many were tried; "
                              "1 = never redraw")


GeometryKind = Literal["none", "ground", "room", "yard"]
SCENE_FIELDS = ("geometry", "room_size_m", "room_height_m", "objects", "object_clearance_m", "tile_m")
# the room fields of both scene sections (images' ``scene``, sequences' ``sequence.scene``)
RoomSize = Annotated[Range, Field(description="room side lengths range, metres (enlarged to hold the "
                                              "subjects, the camera and the wearer's path)")]
RoomHeight = Annotated[Range, Field(description="room height range, metres")]
TileSize = Annotated[Range, Field(description="floor tile size range, metres")]


def _check_room(prefix: str, scene: Any) -> None:
    """The checks of the room fields (``prefix``: where the section sits, e.g. ``scene.``)."""
    _check_range(f"{prefix}room_size_m", scene.room_size_m, 2.0, 100.0)
    _check_range(f"{prefix}room_height_m", scene.room_height_m, 2.0, 20.0)
    _check_range(f"{prefix}tile_m", scene.tile_m, 0.05, 10.0)
    if not 0 <= scene.objects[0] <= scene.objects[1] <= 64:
        raise ValueError(f"{prefix}objects must satisfy 0 <= min <= max <= 64, got {list(scene.objects)}")


class SceneConfig(_Strict):
    """The world of an image: several subjects (crowds), each drawn as a single subject would be,
    then placed on the ground so that no two surfaces come closer than ``clearance_m``; and the
    scene geometry they stand in (:mod:`synthgen.scene`), rendered in the same pass."""

    people: WeightedCount = Field((1, 1), description="[low, high] subjects per image, uniform "
                                    "(people, or animals/objects of subject.kind)")
    spread_m: Range = Field((0.5, 1.0), description="distance of member k from the first, metres, "
                            "times sqrt(k): small = a tight group, people occluding one another")
    clearance_m: float = Field(0.02, ge=0.005, le=1.0, description="closest approach of two "
                               "subjects' surfaces (the test is on the posed meshes)")
    tries: int = Field(50, ge=1, le=1000, description="spots tried per member before it is left out")
    geometry: GeometryKind | dict[GeometryKind, float] = Field(
        "none", description="scene geometry drawn with the subjects (in every layer, occluding them): "
        "none = subjects only (the shaded backend paints a backdrop); ground = a ground plane to the "
        "horizon; room = floor, walls, furniture (a ceiling unless the camera is above it); yard = "
        "ground, fences and blocks under a sky; or a mapping kind -> relative weight, e.g. "
        "{ground: 2, room: 1, yard: 1}")
    room_size_m: RoomSize = (6.0, 11.0)
    room_height_m: RoomHeight = (2.5, 3.2)
    objects: tuple[int, int] = Field((2, 6), description="[min, max] furniture/blocks in a room or yard")
    object_clearance_m: float = Field(0.5, ge=0.0, le=5.0, description="objects keep this far from "
                                      "the subjects' and the camera's ground positions, metres")
    tile_m: TileSize = (0.4, 1.0)

    @model_validator(mode="after")
    def _ranges(self) -> "SceneConfig":
        _check_weighted("scene.people", self.people, 1, 16, integer=True)
        _check_range("scene.spread_m", self.spread_m, 0.0, 100.0)
        _check_room("scene.", self)
        if isinstance(self.geometry, dict) and (not self.geometry or sum(self.geometry.values()) <= 0
                                                or any(w < 0 for w in self.geometry.values())):
            raise ValueError(f"scene.geometry={self.geometry}: weights must be >= 0 and not all 0, "
                             f"e.g. {{ground: 2, room: 1}}")
        return self

    @property
    def geometry_weights(self) -> dict[str, float]:
        """kind -> weight (a single kind: weight 1)."""
        return dict(self.geometry) if isinstance(self.geometry, dict) else {self.geometry: 1.0}

    @property
    def has_geometry(self) -> bool:
        return any(w > 0 and k != "none" for k, w in self.geometry_weights.items())


# --- the sequence section (body-worn cameras, synthgen.sequences) -----------------------------------

Vec3 = Annotated[tuple[float, float, float], Field(description="(x, y, z)")]

# Named body sockets a camera can ride on (mapped to each body model's bones in synthgen.sequences.rigs).
SOCKETS = ("head", "neck", "chest", "pelvis",
           "left_upper_arm", "right_upper_arm", "left_forearm", "right_forearm",
           "left_wrist", "right_wrist", "left_thigh", "right_thigh",
           "left_knee", "right_knee", "left_ankle", "right_ankle")
SocketName = Literal[SOCKETS]  # type: ignore[valid-type]

# Embedded procedural motions (synthgen.sequences.motion), built from the base-pose library.
PROCEDURAL_MOTIONS = ("walk", "turn", "wave", "squat", "reach", "sit_down")


class MotionConfig(_Strict):
    """Where each sequence's motion comes from: embedded procedural motions and/or files.

    Files are ``.npz``: AMASS-style (``poses`` (T, >=66) axis-angle in SMPL joint order with the
    root orientation first, ``trans`` (T, 3) metres in a Z-up world, ``mocap_framerate``; SMPL,
    SMPL-H and SMPL-X files all work, only the 22 body joints are used), or Anny-native
    (``anny_pose_parameters`` (T, J, 4, 4) local-ref transforms, root first, and ``fps``).
    SMPL-family rotations drive an Anny body through synthgen.subjects.retarget.
    """

    library: dict[str, float] = Field(
        default_factory=lambda: {"walk": 3.0, "turn": 2.0, "wave": 1.0, "squat": 1.0, "reach": 1.0,
                                 "sit_down": 1.0},
        description=f"procedural motion -> relative weight; one of {list(PROCEDURAL_MOTIONS)}")
    files: list[str] = Field(default_factory=list, description="AMASS-style or Anny-native .npz "
                             "motion files (see the class docstring)")
    file_fraction: float = Field(0.0, ge=0.0, le=1.0, description="fraction of sequences driven "
                                 "by files (needs files)")
    speed: Range = Field((0.85, 1.15), description="procedural motions: playback speed factor range")
    style_noise_deg: float = Field(3.0, ge=0.0, le=20.0, description="procedural motions: sd of a "
                                   "per-sequence constant offset of every joint angle, degrees")
    yaw_deg: Range = Field((-180.0, 180.0), description="initial body heading about the vertical, "
                           "degrees (0 = facing -Y)")
    grounding: Literal["per_frame", "first_frame"] = Field(
        "per_frame", description="per_frame: every frame's lowest vertex touches z = 0 (feet stay "
        "on the floor; jumps are flattened); first_frame: frame 0 touches the floor and the "
        "file's vertical root motion is kept (procedural motions always use per_frame)")
    align_heading: bool = Field(True, description="files: turn the clip so its first frame faces "
                                "-Y before the yaw_deg draw")

    @model_validator(mode="after")
    def _check(self) -> MotionConfig:
        unknown = sorted(set(self.library) - set(PROCEDURAL_MOTIONS))
        if unknown:
            raise ValueError(f"library has unknown motions {unknown}; known: {list(PROCEDURAL_MOTIONS)}")
        if any(w < 0 for w in self.library.values()):
            raise ValueError("library weights must be >= 0")
        if self.file_fraction > 0 and not self.files:
            raise ValueError(f"file_fraction={self.file_fraction} needs motion files "
                             "(sequence.motion.files)")
        if self.file_fraction < 1 and sum(self.library.values()) <= 0:
            raise ValueError("library weights sum to 0: give a motion a weight > 0 or set "
                             "file_fraction=1 with files")
        _check_range("speed", self.speed, 0.1, 5.0)
        _check_range("yaw_deg", self.yaw_deg, -360.0, 360.0)
        return self


class SpringConfig(_Strict):
    """Spring-damper strap mount: the camera is a unit mass tied to its socket.

    Translation: ``a = -stiffness (p - p_socket) - damping (v - v_socket)``; rotation likewise
    with the rotation vector of ``R R_socket^T`` and world angular velocities. Integrated with
    semi-implicit Euler at a fixed substep (deterministic). Natural frequency sqrt(stiffness)
    rad/s, damping ratio damping / (2 sqrt(stiffness)).
    """

    enabled: bool = Field(True, description="false = the camera is rigidly fixed to its socket")
    stiffness: float = Field(900.0, gt=0.0, description="translational stiffness per unit mass, 1/s^2")
    damping: float = Field(24.0, ge=0.0, description="translational damping per unit mass, 1/s")
    angular_stiffness: float = Field(900.0, gt=0.0, description="rotational stiffness per unit "
                                     "inertia, 1/s^2")
    angular_damping: float = Field(24.0, ge=0.0, description="rotational damping per unit inertia, 1/s")


class DistortionConfig(_Strict):
    """Lens distortion. ``fisheye`` is OpenCV's fisheye (Kannala-Brandt) model:
    ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)``, r = f theta_d.
    """

    model: Literal["none", "fisheye"] = Field("none", description="none = pinhole")
    k: tuple[float, float, float, float] = Field((0.0, 0.0, 0.0, 0.0), description="fisheye k1..k4")
    apply: bool = Field(True, description="true: images and layers are remapped through the lens "
                        "and keypoints_2d follow it; false: images are the lens's rectified pinhole "
                        "view with the same cam_int (a narrower field), keypoints_2d are pinhole, and "
                        "k is stored for the user to apply (cv2.fisheye)")
    max_angle_deg: float = Field(75.0, gt=10.0, le=85.0, description="apply=true: widest ray angle "
                                 "from the optical axis that is rendered (the pinhole render cannot "
                                 "reach 90); pixels beyond it are black (no data), like a fisheye's "
                                 "dark corners")
    render_scale: float = Field(1.5, ge=1.0, le=3.0, description="apply=true: the pinhole render is "
                                "this many times the image size (resolution at the lens centre)")


class MountConfig(_Strict):
    """One body-worn camera (with its IMU).

    Socket frame: at the rest T-pose, x = the body's left, y = up, z = forward; it turns with
    the socket's bone. ``offset_m`` is in that frame from the bone's joint centre. ``look_deg``
    turns a forward-looking camera: yaw (+ = toward x, the body's left), then pitch (+ = up),
    then roll about the optical axis (+ = clockwise as seen from behind the camera).
    """

    name: str = Field(..., min_length=1, max_length=32, description="camera name (in the labels)")
    socket: SocketName = Field(..., description=f"body socket, one of {list(SOCKETS)}")
    offset_m: Vec3 = Field((0.0, 0.0, 0.0), description="position in the socket frame, metres")
    standoff_m: float | None = Field(None, ge=0.0, le=0.5, description="if set, the camera sits this "
                                     "far outside the skin along the direction of offset_m (measured per "
                                     "sequence on the body's rest T-pose, so it fits every body shape); "
                                     "null = offset_m as given")
    look_deg: Vec3 = Field((0.0, 0.0, 0.0), description="(yaw, pitch, roll) in degrees")
    fov_deg: float = Field(100.0, gt=10.0, le=170.0, description="horizontal field of view, degrees "
                           "(pinhole: <= 150; fisheye: of the lens model across the image width)")
    distortion: DistortionConfig = Field(default_factory=DistortionConfig)
    spring: SpringConfig | None = Field(None, description="this mount's spring; null = rig.spring")
    imu: bool = Field(True, description="simulate an IMU on this mount")

    @model_validator(mode="after")
    def _fov(self) -> MountConfig:
        if self.distortion.model == "none" and self.fov_deg > 150:
            raise ValueError(f"mount {self.name}: fov_deg={self.fov_deg} is too wide for a pinhole "
                             "camera (max 150); use distortion.model=fisheye")
        return self


def default_mounts() -> list[MountConfig]:
    """EgoSim's MultiEgoView layout: head, pelvis, both wrists, both knees."""
    return [
        MountConfig(name="head", socket="head", offset_m=(0.0, 0.09, 0.13), standoff_m=0.02, look_deg=(0.0, -35.0, 0.0),
                    fov_deg=120.0, distortion=DistortionConfig(model="fisheye", k=(0.0, 0.0, 0.0, 0.0))),
        MountConfig(name="pelvis", socket="pelvis", offset_m=(0.0, 0.02, 0.16), standoff_m=0.03, look_deg=(0.0, -10.0, 0.0),
                    fov_deg=100.0),
        MountConfig(name="left_wrist", socket="left_wrist", offset_m=(0.0, 0.0, 0.05), standoff_m=0.02,
                    look_deg=(-30.0, -30.0, 0.0), fov_deg=100.0),
        MountConfig(name="right_wrist", socket="right_wrist", offset_m=(0.0, 0.0, 0.05), standoff_m=0.02,
                    look_deg=(30.0, -30.0, 0.0), fov_deg=100.0),
        MountConfig(name="left_knee", socket="left_knee", offset_m=(0.0, 0.0, 0.08), standoff_m=0.02,
                    look_deg=(0.0, -5.0, 0.0), fov_deg=100.0),
        MountConfig(name="right_knee", socket="right_knee", offset_m=(0.0, 0.0, 0.08), standoff_m=0.02,
                    look_deg=(0.0, -5.0, 0.0), fov_deg=100.0),
    ]


class RigConfig(_Strict):
    """The cameras worn by every body, and their shared spring."""

    mounts: list[MountConfig] = Field(default_factory=default_mounts, min_length=1, max_length=16,
                                      description="cameras (cam0, cam1, ... in this order)")
    spring: SpringConfig = Field(default_factory=SpringConfig, description="default strap spring")
    offset_jitter_m: float = Field(0.0, ge=0.0, le=0.1, description="per-sequence uniform jitter of "
                                   "every mount offset (strap placement varies), metres")
    look_jitter_deg: float = Field(0.0, ge=0.0, le=30.0, description="per-sequence uniform jitter of "
                                   "every look angle, degrees")

    @model_validator(mode="after")
    def _unique(self) -> RigConfig:
        names = [m.name for m in self.mounts]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"mount names must be unique, repeated: {dup}")
        return self


class ImuConfig(_Strict):
    """Accelerometer (specific force, gravity included) and gyroscope in each camera's frame.

    Noise: per-sequence constant bias ~ N(0, bias_sd) per axis, plus a bias random walk and white
    noise; the discrete white-noise sd is ``noise_density * sqrt(rate_hz)``.
    """

    rate_hz: int = Field(200, ge=1, le=2000, description="IMU sample rate, Hz")
    gravity: float = Field(9.80665, ge=0.0, description="gravity magnitude, m/s^2 (along -Z)")
    accel_noise_density: float = Field(2.0e-3, ge=0.0, description="accelerometer white noise, "
                                       "m/s^2/sqrt(Hz)")
    accel_bias_sd: float = Field(0.05, ge=0.0, description="accelerometer turn-on bias sd, m/s^2")
    accel_bias_walk: float = Field(1.0e-4, ge=0.0, description="accelerometer bias random walk, "
                                   "m/s^2/sqrt(s)")
    gyro_noise_density: float = Field(1.7e-4, ge=0.0, description="gyroscope white noise, "
                                      "rad/s/sqrt(Hz)")
    gyro_bias_sd: float = Field(5.0e-3, ge=0.0, description="gyroscope turn-on bias sd, rad/s")
    gyro_bias_walk: float = Field(2.0e-5, ge=0.0, description="gyroscope bias random walk, "
                                  "rad/s/sqrt(s)")


class SequenceSceneConfig(_Strict):
    """The world a wearer's cameras see: a ground plane and a procedural room or yard."""

    kinds: dict[GeometryKind, float] = Field(
        default_factory=lambda: {"room": 1.0, "yard": 1.0},
        description="scene kind -> relative weight; none = body only, ground = a floor only, "
        "room = floor, walls, ceiling and furniture, yard = ground, fences, sky and blocks")
    objects: tuple[int, int] = Field((4, 9), description="[min, max] furniture/box count")
    clearance_m: float = Field(0.7, ge=0.0, le=5.0, description="keep objects this far from the "
                               "body's path, metres")
    room_size_m: RoomSize = (6.0, 11.0)
    room_height_m: RoomHeight = (2.5, 3.2)
    tile_m: TileSize = (0.4, 1.0)

    @model_validator(mode="after")
    def _check(self) -> SequenceSceneConfig:
        if sum(self.kinds.values()) <= 0 or any(w < 0 for w in self.kinds.values()):
            raise ValueError("kinds: weights must be >= 0 and not all 0")
        _check_room("", self)
        return self


class MotionBlurConfig(_Strict):
    """Motion blur: the image is the mean of ``subframes`` renders over the shutter interval
    (centred on the frame time). Layers and labels are the frame time's."""

    subframes: int = Field(1, ge=1, le=16, description="renders per image; 1 = no blur")
    shutter: float = Field(0.5, gt=0.0, le=1.0, description="exposure, fraction of the frame interval")


class SequenceConfig(_Strict):
    """Body-worn cameras on moving bodies (EgoSim views): sample ``i`` is frame ``i % frames`` of
    sequence ``i // frames``; each frame holds every rig camera's image and layers plus the IMU
    samples since the previous frame. Units: metres, seconds, degrees, Hz; frames are the body
    model's world frame (Z up, ground z = 0)."""

    frames: int = Field(64, ge=2, le=100000, description="frames per sequence")
    fps: int = Field(30, ge=1, le=240, description="frame rate, Hz")
    motion: MotionConfig = Field(default_factory=MotionConfig)
    rig: RigConfig = Field(default_factory=RigConfig)
    scene: SequenceSceneConfig = Field(default_factory=SequenceSceneConfig)
    imu: ImuConfig = Field(default_factory=ImuConfig)
    motion_blur: MotionBlurConfig = Field(default_factory=MotionBlurConfig)
    substep_hz: int = Field(1000, ge=100, le=20000, description="lowest spring-integration rate, Hz; "
                            "the actual rate is the smallest multiple of lcm(fps, imu.rate_hz) at or "
                            "above it, so frames and IMU samples fall on integration steps")
    instance_layer: bool = Field(True, description="also write camK.instance.png (uint8: 0 nothing, "
                                 "1 body, 2+ scene objects named in the labels)")

    @model_validator(mode="after")
    def _grid(self) -> SequenceConfig:
        from math import lcm

        if lcm(self.fps, self.imu.rate_hz) > 20000:
            raise ValueError(f"fps={self.fps} and imu.rate_hz={self.imu.rate_hz} share no time grid "
                             f"finer than 20 kHz (lcm {lcm(self.fps, self.imu.rate_hz)}); pick rates "
                             "with a common multiple, e.g. fps=30 with imu.rate_hz=200 or 300")
        return self


class RayOptions(_Strict):
    """How the Ray engine (``--engine ray``) retries lost work; ignored by the local engine."""

    max_retries: int = Field(3, ge=0, le=100, description="times a shard (a CPU-stage task, or a call on a "
                             "device actor) is run again after its worker process or node died; the "
                             "device actors are restarted (models reloaded) as often. A sample that "
                             "raises is never retried: it counts against output.max_errors")


class OutputConfig(_Strict):
    shard_size: int = Field(64, ge=1, le=100000, description="samples per shard")
    jpeg_quality: int = Field(92, ge=10, le=100)
    layers: list[LayerName] = Field(default_factory=lambda: ["normal", "depth", "mask", "parts",
                                                             "edges", "skeleton", "instance"],
                                    description="conditioning layers written to shards (instance: "
                                                "uint8 ids, instances[].id, 0 = background)")
    vertices: bool = Field(False, description="also write posed vertices (npz, camera frame)")
    max_errors: float = Field(0.01, ge=0.0, description="error budget: samples whose making raises "
                              "are recorded and skipped; the run stops once more than this many fail "
                              "(a fraction of num_samples if < 1, else a count)")
    formats: list[LabelFormat] = Field(default_factory=lambda: ["synthgen"],
                                       description="label formats in each sample: synthgen = json "
                                                   "(always); hmr2 = 4D-Humans' data.pyd (humans)")
    # how and where shards are stored, not what they hold: left out of the recipe hash and the
    # manifest (storage options may hold credentials)
    storage_options: dict[str, Any] = Field(default_factory=dict, exclude=True,
                                            description="options of the fsspec filesystem of an --out URL "
                                                        "(e.g. {endpoint_url: ..., key: ...} for s3://); "
                                                        "default: the backend's standard variables (AWS_*)")
    grace_s: float = Field(30.0, ge=0.0, le=86400.0, exclude=True,
                           description="on SIGTERM / SIGINT, seconds the shards in flight get to finish "
                                       "before their partial files are dropped")
    ray: RayOptions = Field(default_factory=RayOptions, exclude=True,
                            description="--engine ray: retries after lost workers or nodes")

    @model_validator(mode="after")
    def _formats(self) -> "OutputConfig":
        if "synthgen" not in self.formats:
            raise ValueError(f"output.formats={self.formats}: must include synthgen (the json labels that "
                             f"load_shards, status and report read); write [synthgen, "
                             f"{', '.join(self.formats)}]")
        return self


class Recipe(_Strict):
    """A whole generation run. ``seed`` and the sample index decide every random draw."""

    name: str = "untitled"
    seed: int = Field(0, ge=0, lt=2**63)
    num_samples: int = Field(256, ge=1, le=10**9)
    image: ImageConfig = Field(default_factory=ImageConfig)
    subject: SubjectConfig = Field(default_factory=SubjectConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    render: RenderConfig = Field(default_factory=RenderConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    scene: SceneConfig = Field(default_factory=SceneConfig)
    sequence: SequenceConfig | None = Field(None, description="body-worn camera sequences (EgoSim "
                                            "views, synthgen.sequence); null = single images")

    @model_validator(mode="after")
    def _flux_sizes(self) -> "Recipe":
        if self.backend.kind == "controlnet" and self.backend.controlnet.family == "flux":
            for name in ("width", "height"):
                value = getattr(self.image, name)
                if value % 16:
                    low, high = _multiples_around(value, 16)
                    raise ValueError(f"image.{name}={value}: FLUX needs multiples of 16 (diffusers "
                                     f"would silently resize the image and the labels would no longer "
                                     f"match it); use {low} or {high}")
        return self

    @model_validator(mode="after")
    def _whole_batches_per_shard(self) -> "Recipe":
        if self.backend.kind == "controlnet":
            batch, shard = self.backend.controlnet.batch_size, self.output.shard_size
            if shard % batch:
                low, high = _multiples_around(shard, batch)
                fix = f"{low} or {high}" if shard > batch else f"{high}"
                raise ValueError(f"output.shard_size={shard} is not a multiple of backend.controlnet.batch_size="
                                 f"{batch} (every diffusion batch has one fixed shape inside one shard); "
                                 f"set output.shard_size to {fix}")
        return self

    @model_validator(mode="after")
    def _groups_are_built_for(self) -> "Recipe":
        if dist_bounds(self.scene.people)[1] > (2 if isinstance(self.scene.people, Histogram) else 1):
            if self.sequence is not None:
                raise ValueError(f"scene.people={self.scene.people}: a body-worn sequence has one "
                                 f"wearer; use scene.people=[1,1] with a sequence section")
        return self

    @model_validator(mode="after")
    def _backdrop_folder_needs_no_scene(self) -> "Recipe":
        drawn = [kind for kind, weight in self.scene.geometry_weights.items() if kind != "none" and weight > 0]
        if self.backend.kind == "shaded" and self.backend.shaded.background == "folder" and drawn:
            raise ValueError(f"backend.shaded.background=folder with scene.geometry={self.scene.geometry}: "
                             f"the backdrop images show only where no scene is drawn, so they would be "
                             f"ignored; set scene.geometry=none to use them")
        return self

    @model_validator(mode="after")
    def _hmr2_needs_single_human_images(self) -> "Recipe":
        if "hmr2" in self.output.formats and (self.subject.kind != "human" or self.sequence is not None):
            what = f"subject.kind={self.subject.kind}" if self.subject.kind != "human" else "a sequence recipe"
            raise ValueError(f"output.formats=hmr2: 4D-Humans' data.pyd holds people in single images, not "
                             f"{what}; drop hmr2 from output.formats (the json labels carry everything)")
        return self


def _multiples_around(value: int, step: int) -> tuple[int, int]:
    """The multiples of ``step`` just below and just above ``value`` (not a multiple itself)."""
    low = value // step * step
    return low, low + step


def format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<recipe>"
    msg = first["msg"].removeprefix("Value error, ")
    if not first["loc"] and first["type"] == "value_error":
        return msg  # a whole-recipe check names its own keys
    if first["type"] == "extra_forbidden":
        return f"{key}: unknown key (value {first.get('input')!r}); check the spelling against `synthgen validate`"
    if first["type"] == "literal_error":
        return f"{key}: got {first.get('input')!r}; {msg}"
    if first["type"] == "value_error":
        return f"{key}: {msg}"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{key}: {msg}; got {first.get('input')!r}{more}"


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Validate a recipe dict after applying ``dotted.key=value`` overrides."""
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a mapping of keys to values, got {type(data).__name__}")
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise RecipeError(f"override {item!r}: write it as dotted.key=value, e.g. camera.fov_deg=[40,60]")
    try:
        merged = OmegaConf.merge(OmegaConf.create(data), OmegaConf.from_dotlist(list(overrides)))
        plain = OmegaConf.to_container(merged, resolve=True)
    except (OmegaConfBaseException, yaml.YAMLError) as exc:  # e.g. "{a:1}": YAML flow needs "{a: 1}"
        raise RecipeError(f"overrides {list(overrides)}: {str(exc).splitlines()[0]} (a mapping value "
                          "needs a space after each colon: key={a: 1, b: [2, 3]})") from None
    try:
        return Recipe.model_validate(plain)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc)) from None


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe YAML and apply overrides. Relative paths inside stay relative to the caller."""
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise RecipeError(f"recipe file {str(path)!r} {problem}; pass a YAML file such as "
                          "recipes/quickstart.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"recipe file {str(path)!r} cannot be read ({exc}); pass a readable YAML "
                          "text file such as recipes/quickstart.yaml") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys to values, got "
                          f"{type(data).__name__}; see recipes/quickstart.yaml")
    return recipe_from_dict(data, overrides)


def recipe_hash(recipe: Recipe) -> str:
    """sha256 of the canonical JSON of the resolved recipe, ignoring num_samples.

    num_samples is excluded because it decides how many samples exist, not what sample i is.
    """
    exclude: dict[str, Any] = {"num_samples": True}
    if recipe.sequence is None:  # an absent section is not hashed
        exclude["sequence"] = True
    if not recipe.scene.has_geometry:  # no scene: its settings change nothing, so they do not enter the hash
        exclude["scene"] = set(SCENE_FIELDS)
        exclude["render"] = {"scene_in"}
    payload = recipe.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
