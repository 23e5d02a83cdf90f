"""Procedural materials and light for scene geometry in the weight-free shaded backend.

Every scene pixel is taken back to its world point (depth, ``K``, ``R``, ``t``) and textured in
world coordinates (metres), so a pattern stays fixed on its surface whatever the view: tiles,
grass, asphalt, wood (planks) and plaster, chosen per scene instance and coloured from the
sample's ``background`` stream. Light: one sun (Lambert, times the ``sunlit`` shadow layer) plus
a sky ambient that is brighter on surfaces facing up; pixels with no surface show a sky gradient
by ray elevation. Patterns fade to their mean where a pixel covers more than half their period
(no moire far away).
"""

from __future__ import annotations

import cv2
import numpy as np

MATERIALS = ("tiles", "grass", "asphalt", "wood", "plaster", "paint")
_CHOICES = {"ground": ("grass", "asphalt", "tiles"), "yard": ("grass", "asphalt"), "floor": ("wood", "tiles")}
_NOISE_CELLS = 64


def _hsv(rng: np.random.Generator, hue: tuple[float, float], sat: tuple[float, float],
         val: tuple[float, float]) -> np.ndarray:
    hsv = np.array([[[rng.uniform(*hue), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


def choose_materials(rng: np.random.Generator, kind: str, names: list[str],
                     albedo: np.ndarray) -> list[tuple[str, np.ndarray, float]]:
    """Per scene instance id: (material, base RGB (3,) float32, pattern size in metres)."""
    out: list[tuple[str, np.ndarray, float]] = []
    for name, base in zip(names, np.asarray(albedo, dtype=np.float32)):
        if name == "ground":
            material = _CHOICES["yard" if kind == "yard" else "ground"][int(rng.integers(2 if kind == "yard" else 3))]
        elif name == "floor":
            material = _CHOICES["floor"][int(rng.integers(2))]
        elif name.startswith(("wall", "ceiling", "fence")):
            material = "plaster"
        else:
            material = "wood" if rng.random() < 0.3 else "paint"
        colour = {"grass": lambda: _hsv(rng, (35, 55), (0.45, 0.8), (0.3, 0.6)),
                  "asphalt": lambda: np.full(3, rng.uniform(0.18, 0.35), np.float32),
                  "wood": lambda: _hsv(rng, (8, 20), (0.4, 0.7), (0.35, 0.7))}.get(material, lambda: base)()
        size = {"tiles": rng.uniform(0.3, 0.8), "wood": rng.uniform(0.12, 0.22)}.get(material, 0.5)
        out.append((material, np.asarray(colour, dtype=np.float32), float(size)))
    return out


def _noise(grid: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bilinear value noise: grid (C, C) float32 in [-1, 1] wrapped; a, b (N,) in grid cells."""
    a0, b0 = np.floor(a), np.floor(b)
    fa, fb = (a - a0).astype(np.float32), (b - b0).astype(np.float32)
    c = grid.shape[0]
    i0, j0 = a0.astype(np.int64) % c, b0.astype(np.int64) % c
    i1, j1 = (i0 + 1) % c, (j0 + 1) % c
    top = grid[i0, j0] * (1 - fa) + grid[i1, j0] * fa
    bottom = grid[i0, j1] * (1 - fa) + grid[i1, j1] * fa
    return top * (1 - fb) + bottom * fb


def _fade(footprint: np.ndarray, period: float) -> np.ndarray:
    """(N,) weight of a pattern of ``period`` metres seen at ``footprint`` metres per pixel."""
    return np.clip(1.0 - footprint / (0.5 * period), 0.0, 1.0).astype(np.float32)


def texture(material: str, base: np.ndarray, size: float, a: np.ndarray, b: np.ndarray,
            footprint: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(N, 3) float32 albedo of ``material`` at surface coordinates a, b (N,) metres, each pixel
    covering ``footprint`` (N,) metres; grid: the sample's noise lattice."""
    n = len(a)
    albedo = np.repeat(base[None], n, axis=0)
    if material == "tiles":
        ua, ub = a / size, b / size
        cell_a, cell_b = np.floor(ua), np.floor(ub)
        parity = (cell_a + cell_b) % 2
        grout = (np.abs(ua - cell_a - 0.5) > 0.47) | (np.abs(ub - cell_b - 0.5) > 0.47)
        factor = np.where(parity > 0, 1.08, 0.92) + 0.04 * _noise(grid, cell_a * 7.1, cell_b * 3.3)
        factor = np.where(grout, 0.7, factor).astype(np.float32)
        w = _fade(footprint, size * 0.06)  # the grout fades first, then the checker
        w2 = _fade(footprint, size)
        factor = 1.0 + (np.where(grout, 0.92, factor) - 1.0) * w2 + (factor - np.where(grout, 0.92, factor)) * w
        return albedo * factor[:, None].astype(np.float32)
    if material == "wood":  # planks along a, with grain
        plank = np.floor(b / size)
        shade_plank = 1.0 + 0.12 * _noise(grid, plank * 5.3, plank * 1.7)
        grain = 0.08 * np.sin(b / size * 2 * np.pi * 6 + 3 * _noise(grid, a * 2.0, b * 8.0))
        seam = np.abs(b / size - plank - 0.5) > 0.46
        factor = np.where(seam, 0.75, shade_plank + grain * _fade(footprint, size / 6))
        factor = 1.0 + (factor - 1.0) * _fade(footprint, size)
        return albedo * factor[:, None].astype(np.float32)
    if material == "grass":
        fine = _noise(grid, a * 25.0, b * 25.0) * _fade(footprint, 0.04)
        coarse = _noise(grid, a * 0.7 + 17.0, b * 0.7 + 5.0)
        factor = 1.0 + 0.3 * fine + 0.2 * coarse
        tint = np.stack([1.0 + 0.15 * coarse, np.ones(n), 1.0 - 0.1 * coarse], axis=1)
        return albedo * (factor[:, None] * tint).astype(np.float32)
    if material == "asphalt":
        speck = _noise(grid, a * 60.0, b * 60.0) * _fade(footprint, 0.017)
        factor = 1.0 + 0.25 * speck + 0.1 * _noise(grid, a * 0.5, b * 0.5)
        return albedo * factor[:, None].astype(np.float32)
    amount = 0.06 if material == "plaster" else 0.03  # plaster, paint: low-frequency unevenness
    factor = 1.0 + amount * _noise(grid, a * 3.0, b * 3.0) + 0.5 * amount * _noise(grid, a * 11.0, b * 11.0)
    return albedo * factor[:, None].astype(np.float32)


def _sky(world: dict, rays_cam: np.ndarray) -> np.ndarray:
    """(N, 3) sky gradient for camera rays (N, 3) by their elevation."""
    horizon, zenith = world["sky"] if world.get("sky") is not None else ([0.75, 0.78, 0.8], [0.55, 0.6, 0.7])
    horizon, zenith = np.asarray(horizon, np.float32), np.asarray(zenith, np.float32)
    up = (rays_cam @ np.asarray(world["up_cam"], dtype=np.float32)) / np.linalg.norm(rays_cam, axis=1)
    t = np.sqrt(np.clip(up, 0.0, 1.0))[:, None]
    return horizon + t * (zenith - horizon)


def shade_scene(layers: dict, world: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """(H, W, 3) float32 in [0, ~1]: the lit, textured scene and sky (subjects' pixels are sky,
    they are composited over it), and the drawn materials' labels."""
    inst = layers["scene_instance"]
    height, width = inst.shape
    names = world["instance_names"]
    materials = choose_materials(rng, world["kind"], names, world["instance_albedo"])
    grid = rng.uniform(-1.0, 1.0, (_NOISE_CELLS, _NOISE_CELLS)).astype(np.float32)
    K, R, t = (np.asarray(world[k], dtype=np.float64) for k in ("K", "R", "t"))
    rows, cols = np.nonzero(inst)
    rays = np.stack([cols, rows, np.ones_like(rows)], axis=1).astype(np.float64) @ np.linalg.inv(K).T
    out = np.empty((height, width, 3), dtype=np.float32)
    empty_r, empty_c = np.nonzero(inst == 0)
    empty_rays = np.stack([empty_c, empty_r, np.ones_like(empty_r)], axis=1).astype(np.float32) @ \
        np.linalg.inv(K).T.astype(np.float32)
    out[empty_r, empty_c] = _sky(world, empty_rays)
    if not len(rows):
        return out, {"materials": {}}
    z = layers["depth"][rows, cols].astype(np.float64)
    world_points = (rays * z[:, None] - t) @ R  # R^T (X_cam - t), row-wise
    normal_cam = layers["normal"][rows, cols]
    normal_world = normal_cam.astype(np.float64) @ R
    axis = np.argmax(np.abs(normal_world), axis=1)  # texture on the plane across the dominant axis
    a = np.where(axis == 0, world_points[:, 1], world_points[:, 0])
    b = np.where(axis == 2, world_points[:, 1], world_points[:, 2])
    footprint = z * np.linalg.norm(rays, axis=1) / K[0, 0] / np.maximum(np.abs(
        (normal_cam * (rays / np.linalg.norm(rays, axis=1, keepdims=True))).sum(axis=1)), 0.05)
    ids = inst[rows, cols]
    albedo = np.empty((len(rows), 3), dtype=np.float32)
    for i in np.unique(ids):
        sel = ids == i
        material, base, size = materials[int(i)]
        albedo[sel] = texture(material, base, size, a[sel], b[sel], footprint[sel], grid)
    sun = np.asarray(world["sun_cam"], dtype=np.float32)
    lit = layers["sunlit"][rows, cols].astype(np.float32) / 255.0
    diffuse = np.clip(normal_cam @ sun, 0.0, None) * lit
    ambient = np.float32(world["ambient"]) * (0.75 + 0.25 * (normal_cam @ np.asarray(world["up_cam"], np.float32)))
    out[rows, cols] = albedo * (ambient + np.float32(1.0 - world["ambient"]) * diffuse)[:, None]
    used = {names[i]: materials[i][0] for i in np.unique(ids)}
    return out, {"materials": used, "sunlit_fraction": round(float(lit.mean()), 4)}
