"""Animal body shapes: one Gaussian over SMAL betas per species family, and the draw of betas.

Families come from cluster data (``subject.animal.cluster_file`` or the model file's own
``cluster_means``/``cluster_cov``; SMAL's five: cat, dog, horse, cow, hippo) and from the
recipe's ``species_shapes`` (which override); with neither, the recipe's fallback Gaussian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthgen.errors import UserError
from synthgen.recipe import AnimalConfig
from synthgen.subjects.model_files import read_npz_arrays
from synthgen.subjects.smal_files import resolve_npz
from synthgen.subjects.smal_model import SmalModel

SMAL_FAMILIES = ["cat", "dog", "horse", "cow", "hippo"]  # smal_CVPR2017_data.pkl cluster order


@dataclass
class SpeciesFamily:
    """A Gaussian over betas: mean (B,) and lower Cholesky factor (B, B)."""

    name: str
    mean: np.ndarray
    chol: np.ndarray
    source: str


def load_families(config: AnimalConfig, model: SmalModel, num_betas: int) -> dict[str, SpeciesFamily]:
    """Species families from cluster data (file or model) and recipe Gaussians (which override)."""
    data: dict[str, np.ndarray] = {}
    source = ""
    if config.cluster_file:
        path = resolve_npz(config.cluster_file, "subject.animal.cluster_file", config.convert_pickle,
                           ("cluster_means",))
        data, source = read_npz_arrays(path), path.name
    elif "cluster_means" in model.arrays:
        data, source = model.arrays, "model"
    families: dict[str, SpeciesFamily] = {}
    if "cluster_means" in data:
        means = np.asarray(data["cluster_means"], dtype=np.float64).reshape(len(data["cluster_means"]), -1)
        covs = np.asarray(data["cluster_cov"], dtype=np.float64) if "cluster_cov" in data else \
            np.stack([np.eye(means.shape[1])] * len(means))
        if means.shape[1] < num_betas:
            raise UserError(f"cluster data ({source}) has {means.shape[1]} betas per family; "
                            f"subject.animal.num_betas={num_betas} needs at least that many")
        names = [str(n) for n in data["cluster_names"]] if "cluster_names" in data else \
            list(config.family_names or (SMAL_FAMILIES if len(means) == 5 else
                                         [f"family_{i}" for i in range(len(means))]))
        if len(names) != len(means):
            raise UserError(f"subject.animal.family_names has {len(names)} names for {len(means)} clusters")
        for name, mean, cov in zip(names, means, covs):
            cov = cov[:num_betas, :num_betas]
            chol = np.linalg.cholesky(0.5 * (cov + cov.T) + 1e-9 * np.eye(num_betas))
            families[name] = SpeciesFamily(name, mean[:num_betas], chol, f"clusters:{source}")
    for name, shape in config.species_shapes.items():
        mean = np.broadcast_to(np.asarray(shape.mean, dtype=np.float64), (num_betas,)).copy() \
            if np.size(shape.mean) in (1, num_betas) else None
        sd = np.asarray(shape.sd, dtype=np.float64)
        if mean is None or np.size(sd) not in (1, num_betas):
            raise UserError(f"subject.animal.species_shapes.{name}: mean and sd need 1 or {num_betas} values")
        families[name] = SpeciesFamily(name, mean, np.diag(np.broadcast_to(sd, (num_betas,))), "recipe")
    if config.species:
        unknown = sorted(set(config.species) - set(families))
        if unknown and families:
            raise UserError(f"subject.animal.species: {unknown} have no shape distribution; known families: "
                            f"{sorted(families)} (add subject.animal.species_shapes for new ones)")
        for name in unknown:  # no cluster data at all: the recipe's fallback Gaussian
            families[name] = SpeciesFamily(name, np.full(num_betas, config.betas_mean),
                                    np.eye(num_betas) * config.betas_sd, "recipe:betas_mean/betas_sd")
        families = {n: families[n] for n in sorted(config.species)}
    if not families:
        families["animal"] = SpeciesFamily("animal", np.full(num_betas, config.betas_mean),
                                    np.eye(num_betas) * config.betas_sd, "recipe:betas_mean/betas_sd")
    return families


def draw_betas(rng: np.random.Generator, family: SpeciesFamily, bound: float, tries: int = 100
               ) -> tuple[np.ndarray, int]:
    """Betas ~ N(mean, chol chol^T) with every |beta| <= bound (redrawn; clipped after ``tries``)."""
    for attempt in range(tries):
        betas = family.mean + family.chol @ rng.standard_normal(len(family.mean))
        if np.all(np.abs(betas) <= bound):
            return betas, attempt
    return np.clip(betas, -bound, bound), tries
