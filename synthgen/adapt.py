# Over 500 lines: one closed loop (probe, per-bin errors, target weights, next recipe) with its regressor adapters.
"""Closed-loop recipes: generate where a trained regressor fails, and where unlabelled target images lie.

Every synthgen sample is a pure function of (recipe, seed, index), so each round of this loop is
exact and can be audited from its manifest. One :func:`adapt` call runs ``rounds`` rounds:

1. **probe**: write ``probe`` samples of the round's recipe into ``OUT/round-R/probe``. Each adapted
   attribute becomes a histogram on fixed bins; round 0 carries the base distribution, or, with target
   images and ``reference`` runs (``start="estimate"``), the target estimate (step 3) taught on the
   reference runs alone, with a flat error: no probe budget is spent on the base;
2. **error**: run the regressor on the probe samples' person crops (their labels are known) and
   measure per sample the miss rate ``1 - PCK@threshold`` (a keypoint misses when it lies further than
   ``threshold`` x the box side from its label), then per attribute bin (each sample's labels record
   its bins: ``labels["bins"]``; the pose class is ``pose_name``);
3. **target** (with target images): estimate how the target is spread over each attribute's bins from
   what the images show (:func:`describe`: the regressor's features, its predicted keypoint layout, body
   proportions and viewpoint cues computed from those keypoints, plain image statistics). Default
   (``estimator="classify"``, a label-shift estimate): per attribute, a softmax regression learns the bin
   of every labelled synthetic sample seen (the pooled probes and any ``reference`` runs, e.g. the
   regressor's own training data) from its features; its mean predicted bin probabilities over the
   target images, adjusted by its cross-fitted confusion matrix where it has skill
   (:func:`target_shares`), are the estimate; where it has none, the focus keeps the base
   (``unskilled="base"``). ``estimator="importance"``: a probe-vs-target logistic regression
   gives each probe the covariate-shift weight ``w = p / (1 - p) * n_probe / n_target`` (cross-fitted),
   and the ``w``-weighted share of the probes in each bin is the estimate (errors and both estimates
   pool every round's probes: the regressor does not change during the loop);
4. **next recipe**: per attribute, ``floor + (1 - K floor) * (mix * base + (1 - mix) * focus)`` with
   ``focus ∝ target x error`` (the bins where target mass meets regressor error), so no bin vanishes;
5. **record**: inputs, per-bin counts, errors, target estimates and the resulting weights go into
   ``OUT/adapt.json`` (and each round's recipe into ``OUT/round-R/recipe.yaml``; the last one into
   ``OUT/recipe.yaml``).

The loop reads the target's image files only (jpg/png/jpeg/webp members of tar shards, or image files
of a folder), never a label member of a shard nor how the target was made. Target images are what the
regressor takes: person crops as your detector gives them (probe samples are cropped from their
labelled boxes the same way: a square of ``pad`` x the box side about its centre, HMR2's 1.2).

The regressor protocol (:class:`Regressor`): ``keypoint_names``, ``input_size`` and
``predict(images (B, S, S, 3) uint8) -> (B, K, 2)`` keypoints in crop pixels (pixel centres at
integers); optionally ``features(images) -> (B, D)`` (needed for target weights) and
``confidence(images) -> (B, K)``. :class:`TorchKeypointRegressor` wraps a torch module such as
``examples/train_regressor.py``'s ``KeypointNet``; :class:`HMR2Regressor` wraps an HMR2-style
(4D-Humans) model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
import torch
import yaml

from synthgen.errors import UserError
from synthgen.recipe import Histogram, Recipe, dist_bounds, recipe_from_dict, recipe_hash
from synthgen.seeding import seed63, label_threads

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
POSE_ATTRIBUTE = "subject.pose.library"
ATTRIBUTES = ("subject.shape.age_years", "camera.elevation_deg", "camera.fov_deg", "camera.subject_fraction",
              POSE_ATTRIBUTE)
WEIGHTED = ("subject.shape.age_years", "subject.shape.gender", "subject.shape.height", "subject.shape.weight",
            "subject.shape.muscle", "subject.shape.proportions", "camera.elevation_deg", "camera.azimuth_deg",
            "camera.fov_deg", "camera.subject_fraction", "scene.people", POSE_ATTRIBUTE)
ADAPT_TAG = 0xADA97  # keeps round seeds apart from the base recipe's


# --- the regressor protocol and two adapters ------------------------------------------------------------
@runtime_checkable
class Regressor(Protocol):
    """What :func:`adapt` needs of a regressor. ``features`` / ``confidence`` are optional."""

    keypoint_names: list[str]
    input_size: int

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(B, S, S, 3) uint8 RGB person crops -> (B, K, 2) float keypoints in crop pixels."""


class TorchKeypointRegressor:
    """A torch module ``(B, 3, S, S) in [-1, 1] -> (B, K, 2)`` keypoints in crop units [-0.5, 0.5]
    (``examples/train_regressor.py``'s ``KeypointNet``). Features: the spatial mean of the output of
    submodule ``feature_layer`` (e.g. ``"down16"``), taken by a forward hook."""

    def __init__(self, module: torch.nn.Module, keypoint_names: list[str], input_size: int,
                 feature_layer: str | None = None, batch_size: int = 64):
        self.module, self.keypoint_names, self.input_size = module.eval(), list(keypoint_names), int(input_size)
        self.feature_layer, self.batch_size = feature_layer, batch_size

    def _tensor(self, images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    @torch.no_grad()
    def _run(self, images: np.ndarray, want_features: bool) -> tuple[np.ndarray, np.ndarray | None]:
        outs, feats = [], []
        hook = None
        if want_features:
            layer = dict(self.module.named_modules())[self.feature_layer]
            hook = layer.register_forward_hook(lambda m, i, o: feats.append(o.mean(dim=(2, 3)).double().numpy()))
        try:
            for start in range(0, len(images), self.batch_size):
                outs.append(self.module(self._tensor(images[start:start + self.batch_size])).double().numpy())
        finally:
            if hook is not None:
                hook.remove()
        points = (np.concatenate(outs) + 0.5) * self.input_size - 0.5
        return points, (np.concatenate(feats) if want_features else None)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, False)[0]

    def features(self, images: np.ndarray) -> np.ndarray:
        if self.feature_layer is None:
            raise UserError("TorchKeypointRegressor: target weights need features; pass feature_layer= "
                            "(the name of a submodule whose output to pool, e.g. 'down16')")
        return self._run(images, True)[1]


class HMR2Regressor:
    """An HMR2-style model (4D-Humans ``hmr2.models.HMR2``, loaded by ``load_hmr2(checkpoint)``).

    It reads ``{"img": (B, 3, 256, 192)}`` ImageNet-normalised crops (a 256 square crop with 32 columns
    cut from each side, as 4D-Humans' ``ViTDetDataset`` does) and returns ``pred_keypoints_2d``
    (B, 44, 2) in crop units [-0.5, 0.5] of the 256 square; features are the spatial mean of
    ``model.backbone``'s output. Its 44 slots are scored against the synthgen keypoints they are
    written from (:data:`synthgen.formats.hmr2.SLOT_SOURCES`; a slot the body model lacks is skipped).

    >>> from hmr2.models import load_hmr2                      # 4D-Humans, with its checkpoint
    >>> model, _ = load_hmr2("logs/train/runs/hmr2/checkpoints/epoch=35-step=1000000.ckpt")
    >>> adapt(recipe, HMR2Regressor(model, "cuda"), "out/adapt", target="my_crops/")
    """

    MEAN, STD = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255

    def __init__(self, model: torch.nn.Module, device: str = "cpu", batch_size: int = 16):
        from synthgen.formats.hmr2 import SLOT_SOURCES

        self.model, self.device, self.batch_size = model.eval().to(device), device, batch_size
        self.keypoint_names, self.input_size = list(SLOT_SOURCES), 256

    def _batch(self, images: np.ndarray) -> torch.Tensor:
        x = (images.astype(np.float32) - self.MEAN) / self.STD
        return torch.from_numpy(np.ascontiguousarray(x[:, :, 32:-32])).permute(0, 3, 1, 2).float().to(self.device)

    @torch.no_grad()
    def _run(self, images: np.ndarray, what: str) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            x = self._batch(images[start:start + self.batch_size])
            if what == "features":
                out.append(self.model.backbone(x).mean(dim=(2, 3)).double().cpu().numpy())
            else:
                pred = self.model({"img": x})["pred_keypoints_2d"].double().cpu().numpy()
                out.append((pred + 0.5) * self.input_size - 0.5)
        return np.concatenate(out)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, "predict")

    def features(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, "features")


# --- crops and target images ----------------------------------------------------------------------------
def person_crop(image: np.ndarray, center: np.ndarray, scale: float, size: int, pad: float = 1.2
                ) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) crop of a square of ``pad * scale * 200`` pixels about ``center`` (HMR2's box),
    and the (2, 3) affine taking image pixels to crop pixels (pixel centres at integers)."""
    s = size / (pad * float(scale) * 200.0)
    half = (size - 1) / 2.0
    M = np.array([[s, 0.0, half - s * center[0]], [0.0, s, half - s * center[1]]])
    return cv2.warpAffine(image, M, (size, size), flags=cv2.INTER_AREA, borderValue=(0, 0, 0)), M


def _image_files(path: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image member of tar shards, or image file of a folder, sorted by name."""
    out = []
    tars = [path] if path.is_file() and path.suffix == ".tar" else sorted(path.rglob("*.tar")) if path.is_dir() else []
    for tar in tars:
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):  # never a label member
                    out.append((f"{tar.name}/{member.name}", archive.extractfile(member).read()))
    if path.is_dir() and not tars:
        out = [(str(p.relative_to(path)), p.read_bytes()) for p in path.rglob("*")
               if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(out)


def load_target_images(path: str | Path, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 RGB target crops from tar shards or a folder of images (resized to
    ``size`` where they differ); only image files are opened."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--target {path}: no such folder or shard; give a folder of person-crop images or "
                        "tar shards holding them")
    images = []
    for name, data in _image_files(path):
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"--target {path}: {name} is not a readable image; remove it")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if image.shape[:2] != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        images.append(image)
    if len(images) < 2:
        raise UserError(f"--target {path}: found {len(images)} image(s) (jpg/png/webp); the target estimate "
                        "needs at least 2, better a few hundred")
    return np.stack(images)


# --- attributes, bins and weights -----------------------------------------------------------------------
@dataclass
class AdaptConfig:
    """The loop's knobs (recorded in the manifest)."""

    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES))
    bins: int = 8          # bins per continuous attribute (more where the base has breaks)
    rounds: int = 3
    probe: int = 96        # probe samples per round
    mix: float = 0.5       # weight of the base distribution in each next recipe
    floor: float = 0.02    # least probability of any bin
    threshold: float = 0.1  # PCK threshold, fraction of the box side
    shrink: float = 4.0    # per-bin errors shrink toward the mean as if this many mean samples were added
    pad: float = 1.2       # probe crop = pad x box side
    seed: int = 0          # round r's probe recipe seed = f(seed, r)
    estimator: str = "classify"  # target estimate: "classify" (bin classifier, label shift) or "importance"
    l2: float = 300.0      # L2 strength of the "classify" estimator's softmax regressions
    min_skill: float = 0.15  # "classify": adjust the count (BBSE) where the bin classifier has this skill
    start: str = "estimate"  # round 0: "estimate" (target-weighted from the reference runs, when given) or "base"
    unskilled: str = "base"  # "classify", a bin classifier below min_skill: focus on "base" x error, or "estimate"

    def check(self, recipe: Recipe) -> None:
        """UserError (field, value, fix) for an unusable setting."""
        for name in self.attributes:
            if name not in WEIGHTED:
                raise UserError(f"--attributes: {name!r} is not a weighted attribute; use some of {list(WEIGHTED)}")
        if len(set(self.attributes)) != len(self.attributes) or not self.attributes:
            raise UserError(f"--attributes={self.attributes}: name each attribute once, at least one")
        checks = [("bins", self.bins >= 2, "use 2 or more"), ("rounds", self.rounds >= 1, "use 1 or more"),
                  ("probe", self.probe >= 8, "use 8 or more samples a round"),
                  ("mix", 0.0 <= self.mix <= 1.0, "use a value in [0, 1]"),
                  ("threshold", 0.0 < self.threshold <= 1.0, "use a value in (0, 1]"),
                  ("shrink", self.shrink >= 0.0, "use a value >= 0"), ("pad", 1.0 <= self.pad <= 3.0, "use 1..3"),
                  ("estimator", self.estimator in ("classify", "importance"), "use classify or importance"),
                  ("start", self.start in ("estimate", "base"), "use estimate or base"),
                  ("unskilled", self.unskilled in ("base", "estimate"), "use base or estimate"),
                  ("l2", self.l2 > 0.0, "use a value > 0")]
        for name, ok, fix in checks:
            if not ok:
                raise UserError(f"--{name}={getattr(self, name)}: {fix}")
        most = max(len(attribute_bins(recipe, a, self.bins)["base"]) for a in self.attributes)
        if not 0.0 <= self.floor * most < 1.0:
            raise UserError(f"--floor={self.floor}: with {most} bins the floors would take all the mass; "
                            f"use a value in [0, {1.0 / most:.3g})")
        if recipe.subject.kind != "human" or recipe.sequence is not None:
            raise UserError(f"adapt: subject.kind={recipe.subject.kind} / sequence recipes are not supported; "
                            "use a single-image human recipe")


def _get(recipe: Recipe, dotted: str) -> Any:
    value = recipe
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _edges(breaks: list[float], k: int) -> list[float]:
    """Edges through every break, each segment cut into equal bins no wider than (span / k)."""
    width = (breaks[-1] - breaks[0]) / k
    out = [breaks[0]]
    for a, b in zip(breaks, breaks[1:]):
        n = max(1, math.ceil((b - a) / width - 1e-9))
        out += [a + (b - a) * (i + 1) / n for i in range(n)]
    return out


def _mass(edges: list[float], comps: list[tuple[float, float, float]]) -> np.ndarray:
    """Mass of a mixture of uniform pieces (weight, low, high) in each bin of ``edges``."""
    e = np.asarray(edges)
    out = np.zeros(len(e) - 1)
    for w, lo, hi in comps:
        overlap = np.clip(np.minimum(e[1:], hi) - np.maximum(e[:-1], lo), 0.0, None)
        out += w * overlap / (hi - lo)
    return out / out.sum()


def _pieces(spec) -> list[tuple[float, float, float]]:
    if isinstance(spec, Histogram):
        return [(p, a, b) for p, a, b in zip(spec.probabilities, spec.bins, spec.bins[1:]) if p > 0]
    lo, hi = dist_bounds(spec)
    return [(1.0, float(lo), float(hi))]


def attribute_bins(recipe: Recipe, name: str, k: int) -> dict[str, Any]:
    """An attribute's bins in ``recipe`` (the base): ``edges`` (continuous) or ``names`` (pose class), and
    ``base``, the base distribution's probability of each bin.

    camera.elevation_deg joins the high and ground views (``high_view_prob``, ``ground_view_prob``)
    into one histogram; scene.people counts have integer edges (one bin per count).
    """
    if name == POSE_ATTRIBUTE:
        lib = recipe.subject.pose.library
        names = sorted(lib)
        total = sum(lib.values())
        return {"names": names, "base": np.array([lib[n] / total for n in names])}
    spec = _get(recipe, name)
    if spec is None:  # Anny's calibrated phenotype: adapt over the whole [0, 1]
        spec = (0.0, 1.0)
    comps = _pieces(spec)
    if name == "camera.elevation_deg":
        cam = recipe.camera
        main = 1.0 - cam.high_view_prob - cam.ground_view_prob
        comps = [(w * main, a, b) for w, a, b in comps] + \
            [(cam.high_view_prob, *cam.high_elevation_deg), (cam.ground_view_prob, *cam.ground_elevation_deg)]
        comps = [c for c in comps if c[0] > 0 and c[2] > c[1]]
    if name == "scene.people":
        if not isinstance(spec, Histogram):
            comps = [(1.0, float(spec[0]), float(spec[1]) + 1.0)]
        edges = [float(e) for e in range(int(min(c[1] for c in comps)), int(max(c[2] for c in comps)) + 1)]
    else:
        edges = _edges(sorted({float(x) for c in comps for x in c[1:]}), k)
    return {"edges": edges, "base": _mass(edges, comps)}


def floored(weights: np.ndarray, floor: float) -> np.ndarray:
    """``floor + (1 - K floor) * weights / sum(weights)``: sums to 1, every bin at least ``floor``."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))
    return floor + (1.0 - len(w) * floor) * w


def next_weights(base: np.ndarray, error: np.ndarray, target: np.ndarray | None, mix: float,
                 floor: float) -> np.ndarray:
    """(K,) next-round probabilities of an attribute's bins: base mixed with focus = target x error,
    the focus kept within the base's support (a bin the base never draws, such as a gap between the
    main and high elevation ranges, gets only the floor)."""
    focus = (base if target is None else target) * error * (base > 0)  # within the base's support
    focus = focus / focus.sum() if focus.sum() > 0 else base
    return floored(mix * base + (1.0 - mix) * focus, floor)


def recipe_with_weights(base: Recipe, bins: dict[str, dict[str, Any]], weights: dict[str, np.ndarray],
                        seed: int, num_samples: int) -> Recipe:
    """The base recipe with each adapted attribute replaced by a histogram of ``weights`` on its bins."""
    data = base.model_dump(mode="json", exclude_none=True)
    data |= {"seed": int(seed), "num_samples": int(num_samples)}
    for name, w in weights.items():
        section, *path, leaf = name.split(".")
        node = data[section]
        for part in path:
            node = node[part]
        w = [float(round(x, 9)) for x in w]
        if name == POSE_ATTRIBUTE:
            node[leaf] = dict(zip(bins[name]["names"], w))
            continue
        node[leaf] = {"bins": bins[name]["edges"], "weights": w}
        if name == "camera.elevation_deg":  # high and ground views live in the histogram now
            data["camera"] |= {"high_view_prob": 0.0, "ground_view_prob": 0.0}
    return recipe_from_dict(data)


# --- per-sample errors and target weights ---------------------------------------------------------------
def read_probe(run: Path, size: int, pad: float, names: list[str]) -> dict[str, Any]:
    """Crops (N, size, size, 3), keypoints in crop pixels (N, K, 2) in the regressor's ``names`` order,
    a usable-keypoint mask (N, K) and each sample's labels."""
    from synthgen.data import load_shards

    crops, points, usable, labels = [], [], [], []
    for item in load_shards(run, flat=True, split_by_node=False):
        crop, M = person_crop(item["image"], item["center"], float(item["scale"]), size, pad)
        own = list(item["instances"][0]["keypoint_names"])
        idx = [own.index(n) if n in own else -1 for n in names]
        kp = item["keypoints_2d"]
        uv = kp[:, :2].astype(np.float64) @ M[:, :2].T + M[:, 2]
        pts = np.where(np.array(idx)[:, None] >= 0, uv[idx], np.nan)
        ok = np.array([i >= 0 and kp[i, 2] > 0 for i in idx]) & (np.abs(pts / size - 0.5) < 0.5).all(axis=1)
        crops.append(crop), points.append(pts), usable.append(ok), labels.append(item["labels"])
    if not crops:
        raise UserError(f"{run}: the probe run wrote no samples; check the recipe")
    return {"crops": np.stack(crops), "points": np.stack(points), "usable": np.stack(usable),
            "side": size / pad, "labels": labels}


def sample_errors(predicted: np.ndarray, probe: dict[str, Any], threshold: float) -> np.ndarray:
    """(N,) miss rate per sample: share of usable keypoints further than threshold x box side."""
    dist = np.linalg.norm(predicted - probe["points"], axis=-1) / probe["side"]
    miss = np.where(probe["usable"], dist >= threshold, False)
    return miss.sum(axis=1) / np.maximum(probe["usable"].sum(axis=1), 1)


def pck(predicted: np.ndarray, probe: dict[str, Any], threshold: float = 0.1) -> float:
    """PCK@threshold over every usable keypoint of a probe/scoring set."""
    dist = np.linalg.norm(predicted - probe["points"], axis=-1) / probe["side"]
    return float(((dist < threshold) & probe["usable"]).sum() / max(int(probe["usable"].sum()), 1))


def _logistic(x: np.ndarray, y: np.ndarray, l2: float = 10.0) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression (torch L-BFGS, float64): weights (D,), bias."""
    X, Y = torch.from_numpy(x), torch.from_numpy(y.astype(np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, Y) + 0.5 * l2 * (w @ w) / len(Y)
        value.backward()
        return value

    opt.step(loss)
    return w.detach().numpy(), float(b.detach())


def importance_weights(probe_features: np.ndarray, target_features: np.ndarray, clip: float = 10.0
                       ) -> tuple[np.ndarray, dict[str, float]]:
    """(N,) covariate-shift weights ~ p_target(x) / p_probe(x) of the probe samples, from a probe-vs-target
    logistic regression on standardised features, cross-fitted over two folds (each half scored by the
    classifier fitted on the other), clipped at ``clip`` x the mean. Also the classifier's held-out
    accuracy (0.5 = the sets look alike)."""
    n, m = len(probe_features), len(target_features)
    x = np.concatenate([probe_features, target_features]).astype(np.float64)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    y = np.r_[np.zeros(n), np.ones(m)]
    fold = np.arange(n + m) % 2
    logit = np.zeros(n + m)
    for f in (0, 1):
        w, b = _logistic(x[fold != f], y[fold != f])
        logit[fold == f] = x[fold == f] @ w + b
    weights = np.exp(np.clip(logit[:n], -30, 30)) * n / m
    weights = np.minimum(weights, clip * weights.mean())
    accuracy = float(((logit > 0) == (y > 0)).mean())
    return weights / weights.mean(), {"classifier_accuracy": round(accuracy, 6)}


def sample_bin(labels: dict[str, Any], name: str, bins: dict[str, Any]) -> int:
    """The bin of attribute ``name`` a probe sample was drawn from (its recorded bins; pose: its name)."""
    if name == POSE_ATTRIBUTE:
        return bins["names"].index(labels["instances"][0]["params"]["pose_name"])
    return int(labels["bins"][name])


LABEL_VALUES = {  # where each adapted attribute's drawn value lies in a sample's labels
    "subject.shape.age_years": lambda lab: lab["instances"][0]["params"]["age_years"],
    "camera.elevation_deg": lambda lab: lab["camera"]["elevation_deg"],
    "camera.azimuth_deg": lambda lab: lab["camera"]["azimuth_deg"],
    "camera.fov_deg": lambda lab: lab["camera"]["fov_deg"],
    "camera.subject_fraction": lambda lab: lab["camera"]["subject_fraction_target"]}


def value_bin(labels: dict[str, Any], name: str, bins: dict[str, Any]) -> int | None:
    """The bin of attribute ``name`` a labelled sample of any recipe falls in, from its drawn value (a
    sample of a plain-range recipe records no bins); None where the labels do not carry the value."""
    if "bins" in labels and name in labels["bins"] or name == POSE_ATTRIBUTE:
        return sample_bin(labels, name, bins)
    if name not in LABEL_VALUES:
        return None
    edges = np.asarray(bins["edges"])
    return int(np.clip(np.searchsorted(edges, LABEL_VALUES[name](labels), side="right") - 1, 0, len(edges) - 2))


def per_bin(values: np.ndarray, members: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(K,) counts and (K,) sums of ``values`` (N,) by bin ``members`` (N,)."""
    return np.bincount(members, minlength=k).astype(float), np.bincount(members, weights=values, minlength=k)


# --- the loop -------------------------------------------------------------------------------------------
def _round6(x) -> list[float]:
    return [float(round(float(v), 6)) for v in np.asarray(x).ravel()]


def round_seed(seed: int, r: int) -> int:
    """The probe recipe seed of round ``r``."""
    return seed63(seed, ADAPT_TAG, r) % (2**62)


def adapt(recipe: Recipe, regressor: Regressor, out_dir: str | Path, config: AdaptConfig | None = None,
          target: str | Path | np.ndarray | None = None, workers: int = 1,
          target_bins: dict[str, Any] | None = None, reference: list[str | Path] = ()) -> dict[str, Any]:
    """Run the loop (see the module docstring); returns the manifest written to ``OUT/adapt.json``.

    target: a folder / tar shard(s) of person-crop images, or an array (N, S, S, 3) uint8 of them;
    None = adapt to the regressor's errors on the base distribution alone.
    target_bins: attribute -> the target's known probability of each of its bins (``manifest["bins"]``
    order), used in place of the image estimate for those attributes (when the target's camera heights
    or ages are known from elsewhere; the example uses it as an oracle ablation).
    reference: labelled synthetic runs (e.g. the regressor's own training data) that join the probes
    in teaching the "classify" target estimate which image goes with which bin (never the errors).
    """
    from synthgen.run import generate

    config = config or AdaptConfig()
    config.check(recipe)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bins = {name: attribute_bins(recipe, name, config.bins) for name in config.attributes}
    base = {name: b["base"] for name, b in bins.items()}
    target_images = None
    if target is not None:
        if not callable(getattr(regressor, "features", None)):
            raise UserError("adapt --target: the regressor has no features(images) method; the target "
                            "estimate needs one (see synthgen.adapt.Regressor)")
        target_images = target if isinstance(target, np.ndarray) else load_target_images(target, regressor.input_size)
        with label_threads():
            target_features = describe(regressor, target_images)
    manifest: dict[str, Any] = {
        "base_recipe": recipe.model_dump(mode="json"), "base_recipe_hash": recipe_hash(recipe),
        "config": asdict(config), "regressor": type(regressor).__name__,
        "target": None if target_images is None else {  # what was read: the images' pixels, not where from
            "images": int(len(target_images)), "sha256": hashlib.sha256(target_images.tobytes()).hexdigest()},
        "target_bins_given": {n: _round6(w) for n, w in (target_bins or {}).items()},
        "bins": {n: {k: (v if k == "names" else _round6(v)) for k, v in b.items()} for n, b in bins.items()},
        "rounds": []}
    weights = dict(base)
    seen: dict[str, list] = {"errors": [], "features": [], "labels": []}  # every round's probes so far
    if target_images is not None and config.estimator == "classify":
        for run in reference:  # labelled synthetic samples: features and labels for the bin classifiers
            ref = read_probe(Path(run), regressor.input_size, config.pad, regressor.keypoint_names)
            with label_threads():
                seen["features"].append(describe(regressor, ref["crops"]))
            seen["labels"] += ref["labels"]
    seen["reference"] = len(seen["labels"])
    manifest["reference_samples"] = seen["reference"]
    if seen["reference"] and config.start == "estimate":
        weights, manifest["start"] = _start_weights(seen, bins, base, target_features, config, target_bins or {})
    for r in range(config.rounds):
        probe_recipe = recipe_with_weights(recipe, bins, weights, round_seed(config.seed, r), config.probe)
        folder = out / f"round-{r}"
        folder.mkdir(exist_ok=True)
        (folder / "recipe.yaml").write_text(yaml.safe_dump(probe_recipe.model_dump(mode="json"), sort_keys=False))
        generate(probe_recipe, folder / "probe", workers=workers, progress=False)
        record, weights = _round(r, probe_recipe, folder, regressor, config, bins, base, weights, seen,
                                 None if target_images is None else target_features, target_bins or {})
        manifest["rounds"].append(record)
        log.info("round %d: probe PCK@%.2f %.3f; next weights %s", r, config.threshold, record["probe_pck"],
                 {n: _round6(w)[:4] for n, w in weights.items()})
    final = recipe_with_weights(recipe, bins, weights, recipe.seed, recipe.num_samples)
    (out / "recipe.yaml").write_text(yaml.safe_dump(final.model_dump(mode="json"), sort_keys=False))
    manifest["final_recipe_hash"] = recipe_hash(final)
    manifest["final_weights"] = {n: _round6(w) for n, w in weights.items()}
    (out / "adapt.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def keypoint_geometry(points: np.ndarray, size: int) -> np.ndarray:
    """(B, 2 + K(K-1)/2) body proportions and viewpoint from predicted keypoints (B, K, 2) in crop pixels:
    the log spread of the keypoints (RMS radius / crop side: how much of the crop the body fills), the log
    of their vertical / horizontal extent (foreshortening), and every pairwise distance / spread (limb-length
    ratios, head-to-body proportions: what tells a child from an adult and a high camera from a level one)."""
    p = np.asarray(points, dtype=np.float64)
    centred = p - p.mean(axis=1, keepdims=True)
    spread = np.sqrt((centred**2).sum(axis=-1).mean(axis=1)) + 1e-6
    extent = p.max(axis=1) - p.min(axis=1) + 1e-6
    i, j = np.triu_indices(p.shape[1], k=1)
    pairs = np.linalg.norm(p[:, i] - p[:, j], axis=-1) / spread[:, None]
    return np.concatenate([np.log(spread / size)[:, None], np.log(extent[:, 1] / extent[:, 0])[:, None], pairs],
                          axis=1)


def image_statistics(images: np.ndarray, side: int = 64, cells: int = 4, orientations: int = 9) -> np.ndarray:
    """(B, cells² x orientations + 24) what any crop shows without a model: gradient-orientation
    histograms of the grey crop on a ``cells`` x ``cells`` grid (silhouette and background layout, HOG-like,
    each cell L2-normalised) and 8-bin hue, saturation and value histograms (e.g. floor seen from above vs
    walls and sky seen from the ground). Images (B, S, S, 3) uint8."""
    out = []
    step = side // cells
    for image in images:
        if image.shape[0] != side:
            image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
        gy, gx = np.gradient(grey)
        magnitude = np.hypot(gx, gy)
        angle = (np.arctan2(gy, gx) % np.pi) / np.pi * orientations
        cell = (np.arange(side) // step).clip(max=cells - 1)
        index = ((cell[:, None] * cells + cell[None, :]) * orientations + angle.astype(int).clip(max=orientations - 1))
        hog = np.bincount(index.ravel(), weights=magnitude.ravel(), minlength=cells * cells * orientations)
        hog = hog.reshape(cells * cells, orientations)
        hog /= np.linalg.norm(hog, axis=1, keepdims=True) + 1e-6
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hists = [np.histogram(hsv[..., c], bins=8, range=(0, top))[0] / float(side * side)
                 for c, top in ((0, 180), (1, 256), (2, 256))]
        out.append(np.concatenate([hog.ravel(), *hists]))
    return np.stack(out)


def describe(regressor: Regressor, images: np.ndarray) -> np.ndarray:
    """(N, D + 2K + G + 168) what the target estimate sees of images (never a label): the regressor's
    features, the keypoint layout it predicts (crop units), body proportions and viewpoint cues computed
    from those keypoints (:func:`keypoint_geometry`) and plain image statistics (:func:`image_statistics`)."""
    predicted = np.asarray(regressor.predict(images), dtype=np.float64)
    layout = predicted / regressor.input_size - 0.5
    return np.concatenate([np.asarray(regressor.features(images), dtype=np.float64),
                           layout.reshape(len(images), -1), keypoint_geometry(predicted, regressor.input_size),
                           image_statistics(images)], axis=1)


def _softmax_regression(x: np.ndarray, y: np.ndarray, k: int, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """L2-regularised multinomial logistic regression (torch L-BFGS, float64): weights (D, k), bias (k,)."""
    X, Y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    w = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(X @ w + b, Y) + 0.5 * l2 * (w * w).sum() / len(Y)
        value.backward()
        return value

    opt.step(loss)
    return w.detach().numpy(), b.detach().numpy()


def _bin_probabilities(x: np.ndarray, y: np.ndarray, k: int, query: np.ndarray, l2: float) -> np.ndarray:
    """(M, k) bin probabilities of ``query`` (M, D) from a softmax regression fitted on ``x`` (N, D), ``y`` (N,)."""
    w, b = _softmax_regression(x, y, k, l2)
    logits = query @ w + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def target_shares(labelled: np.ndarray, members: np.ndarray, k: int, target: np.ndarray, l2: float = 300.0,
                  min_skill: float = 0.15, ridge: float = 0.01, min_count: int = 5
                  ) -> tuple[np.ndarray, dict[str, float]]:
    """(k,) estimated share of the target images in each bin of one attribute (a label-shift estimate),
    and how it was made.

    A softmax regression learns each labelled synthetic sample's bin (``members`` (N,)) from its features
    (``labelled`` (N, D)). Cross-fitted over two folds it gives the labelled set's soft confusion matrix
    ``C[true, predicted]`` and its skill (1 - cross-entropy / the bin shares' own entropy: 0 = it cannot
    tell the bins apart). Fitted on all, its mean bin probabilities over the target images (``target``
    (M, D)) are ``mu``. Where the skill reaches ``min_skill`` the estimate is the adjusted count
    (black-box shift estimation, Lipton et al. 2018): the distribution ``pi`` solving ``C^T pi = mu``
    (non-negative least squares, summing to 1, ``ridge`` toward the labelled shares); elsewhere ``mu`` itself
    (probabilistic classify-and-count: shrunk toward the labelled shares, but it cannot run away where the
    classifier has no skill). Bins fewer than ``min_count`` labelled samples fell in are left out of the
    classifier and get 0 (the floor restores them)."""
    from scipy.optimize import nnls

    counts = np.bincount(members, minlength=k)
    present = np.flatnonzero(counts >= min_count)  # a bin seen a few times has no usable confusion row
    if len(present) < 2:  # nothing to tell apart: the labelled shares, unused (no skill)
        return counts / max(counts.sum(), 1), {"skill": 0.0, "adjusted": False}
    keep = np.isin(members, present)
    labelled, members = labelled[keep], members[keep]
    x = np.concatenate([labelled, target]).astype(np.float64)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    x, xt = x[:len(labelled)], x[len(labelled):]
    y = np.searchsorted(present, members)
    n = len(present)
    source = np.bincount(y, minlength=n) / len(y)
    fold = np.arange(len(y)) % 2
    held = np.zeros((len(y), n))
    for f in (0, 1):
        held[fold == f] = _bin_probabilities(x[fold != f], y[fold != f], n, x[fold == f], l2)
    skill = 1.0 - float(-np.log(held[np.arange(len(y)), y] + 1e-12).mean() / -np.log(source[y]).mean()) \
        if n > 1 else 0.0
    mu = _bin_probabilities(x, y, n, xt, l2).mean(axis=0)
    shares = mu
    if skill >= min_skill:
        confusion = np.stack([held[y == j].mean(axis=0) for j in range(n)])
        a = np.vstack([confusion.T, math.sqrt(ridge) * np.eye(n), 100.0 * np.ones((1, n))])
        shares = nnls(a, np.r_[mu, math.sqrt(ridge) * source, 100.0])[0]
    out = np.zeros(k)
    out[present] = shares / shares.sum()
    return out, {"skill": round(skill, 6), "adjusted": bool(skill >= min_skill)}


def _round(r: int, probe_recipe: Recipe, folder: Path, regressor: Regressor, config: AdaptConfig,
           bins: dict, base: dict, weights: dict, seen: dict, target_features: np.ndarray | None,
           given: dict[str, Any]
           ) -> tuple[dict, dict]:
    """Steps 2-4 of round ``r`` on its written probe set: the round's record and the next weights.

    Errors and the target estimate pool the probes of every round so far (``seen``, extended here):
    the regressor is the same, and importance weights against the pooled probes (drawn from the
    rounds' mixture) still estimate the target's share of each bin.
    """
    probe = read_probe(folder / "probe", regressor.input_size, config.pad, regressor.keypoint_names)
    with label_threads():
        predicted = np.asarray(regressor.predict(probe["crops"]), dtype=np.float64)
        if target_features is not None:
            seen["features"].append(describe(regressor, probe["crops"]))
    errors = sample_errors(predicted, probe, config.threshold)
    seen["errors"].append(errors)
    seen["labels"] += probe["labels"]
    errors_all = np.concatenate(seen["errors"])
    probe_labels = seen["labels"][seen["reference"]:]
    iw, classifier = (None, {}) if target_features is None or config.estimator != "importance" else \
        importance_weights(np.concatenate(seen["features"]), target_features)
    record = {"round": r, "recipe_hash": recipe_hash(probe_recipe), "seed": probe_recipe.seed,
              "probe_samples": len(errors), "probe_pck": round(pck(predicted, probe, config.threshold), 6),
              "pooled_samples": len(errors_all), "probe_weights": {n: _round6(w) for n, w in weights.items()},
              **classifier, "attributes": {}}
    mean_error = float(errors_all.mean())
    new = {}
    for name in config.attributes:
        k = len(base[name])
        members = np.array([sample_bin(lab, name, bins[name]) for lab in probe_labels])
        count, total = per_bin(errors_all, members, k)
        error = np.full(k, mean_error)  # shrunk toward the mean; a bin no probe fell in gets the mean
        np.divide(total + config.shrink * mean_error, count + config.shrink, out=error, where=count + config.shrink > 0)
        tgt = None
        if iw is not None:  # E_probe[w 1{bin}] = P_target(bin); `shrink` samples' worth of base smooth it
            wsum = np.bincount(members, weights=iw, minlength=k)
            tgt = (wsum + config.shrink * base[name]) / (wsum.sum() + config.shrink)
        used = tgt
        if target_features is not None and config.estimator == "classify":
            tgt, how = _classify_shares(seen, name, bins[name], target_features, config.l2, config.min_skill)
            used = _trusted(tgt, how, config)
            record["attributes"][name] = how | {"target_used": used is not None}
        if name in given:
            tgt = used = _given_shares(given, name)
        new[name] = next_weights(base[name], error, used, config.mix, config.floor)
        record["attributes"][name] = record["attributes"].get(name, {}) | {
            "count": _round6(count), "error": _round6(error), "target": None if tgt is None else _round6(tgt),
            "next_weights": _round6(new[name])}
    return record, new


def _start_weights(seen: dict, bins: dict, base: dict, target_features: np.ndarray, config: AdaptConfig,
                   given: dict[str, Any]) -> tuple[dict, dict]:
    """Round 0's weights before any probe: the target estimate taught on the reference runs alone (or the
    ``given`` shares), with a flat error (the regressor's errors are known only once a probe has been
    scored). Also its record."""
    weights, record = {}, {}
    for name in config.attributes:
        tgt, how = _classify_shares(seen, name, bins[name], target_features, config.l2, config.min_skill)
        used = _trusted(tgt, how, config)
        if name in given:
            tgt = used = _given_shares(given, name)
        weights[name] = next_weights(base[name], np.ones(len(base[name])), used, config.mix, config.floor)
        record[name] = how | {"target": _round6(tgt), "target_used": used is not None,
                              "weights": _round6(weights[name])}
    return weights, record


def _given_shares(given: dict[str, Any], name: str) -> np.ndarray:
    """The known target shares of attribute ``name`` (``adapt(target_bins=...)``), normalised."""
    return np.asarray(given[name], dtype=np.float64) / float(np.sum(given[name]))


def _trusted(estimate: np.ndarray, how: dict, config: AdaptConfig) -> np.ndarray | None:
    """The estimate the focus uses: None (the base) where the bin classifier cannot tell the bins apart
    (skill below ``min_skill``) and ``unskilled="base"``: its plain mean is then noise about the labelled
    shares, and moving such an attribute off the base costs base accuracy for no target gain."""
    return estimate if how["adjusted"] or config.unskilled == "estimate" else None


def _classify_shares(seen: dict, name: str, bins: dict, target_features: np.ndarray, l2: float,
                     min_skill: float) -> tuple[np.ndarray, dict[str, float]]:
    """The target's share of each bin of ``name``, from bin classifiers taught on every labelled sample
    seen (reference runs and pooled probes) whose labels carry the attribute."""
    members = [value_bin(lab, name, bins) for lab in seen["labels"]]
    keep = np.array([m is not None for m in members])
    features = np.concatenate(seen["features"])[keep]
    return target_shares(features, np.array([m for m in members if m is not None]), len(bins["base"]),
                         target_features, l2, min_skill)


def load_regressor(spec: str, checkpoint: str | None = None) -> Regressor:
    """The regressor a ``FILE.py:FUNCTION`` or ``module:FUNCTION`` factory returns (called with the
    checkpoint path when one is given), checked against :class:`Regressor`."""
    import importlib
    import importlib.util

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise UserError(f"--regressor {spec!r}: write FILE.py:FUNCTION or module:FUNCTION, e.g. "
                        "examples/adapt_regressor.py:load_keypointnet")
    try:
        if where.endswith(".py"):
            if not Path(where).is_file():
                raise UserError(f"--regressor {spec!r}: {where} does not exist")
            module_spec = importlib.util.spec_from_file_location(Path(where).stem, where)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as exc:
        raise UserError(f"--regressor {spec!r}: cannot import {where} ({exc}); check the module name") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"--regressor {spec!r}: {where} has no function {name}")
    regressor = factory(checkpoint) if checkpoint else factory()
    if not isinstance(regressor, Regressor):
        raise UserError(f"--regressor {spec!r}: {name} returned a {type(regressor).__name__}, which lacks "
                        "keypoint_names, input_size or predict(images) (see synthgen.adapt.Regressor)")
    return regressor
