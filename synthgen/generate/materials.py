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
_REMAP_WIDTH = 1024


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
                  "asphalt": lambda: np.full(3, rng.uniform(0.3, 0.48), np.float32),
                  "wood": lambda: _hsv(rng, (8, 20), (0.4, 0.7), (0.35, 0.7))}.get(material, lambda: base)()
        size = {"tiles": rng.uniform(0.3, 0.8), "wood": rng.uniform(0.12, 0.22)}.get(material, 0.5)
        out.append((material, np.asarray(colour, dtype=np.float32), float(size)))
    return out


def _noise(grid: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bilinear value noise: grid (C, C) float32 in [-1, 1], wrapped; a, b (N,) float32 in grid
    cells. Returns (N,) float32 (OpenCV's remap: 1/32-cell interpolation steps; its wrapped
    border takes any cell, so no modulo here: NumPy's costs a millisecond a sample)."""
    n = len(a)
    rows = -(-n // _REMAP_WIDTH)  # remap wants images under 32767 a side: (rows, 1024) blocks
    maps = np.zeros((2, rows * _REMAP_WIDTH), dtype=np.float32)
    maps[0, :n], maps[1, :n] = a, b
    shape = (rows, _REMAP_WIDTH)
    out = cv2.remap(grid, maps[0].reshape(shape), maps[1].reshape(shape), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_WRAP)
    return out.reshape(-1)[:n]


def _fade(footprint: np.ndarray, period: float) -> np.ndarray:
    """(N,) weight of a pattern of ``period`` metres seen at ``footprint`` metres per pixel."""
    return np.clip(1.0 - footprint / (0.5 * period), 0.0, 1.0).astype(np.float32)


def texture(material: str, base: np.ndarray, size: float, a: np.ndarray, b: np.ndarray,
            footprint: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(3, N) float32 albedo of ``material`` (a row per RGB channel) at surface coordinates a, b
    (N,) metres, each pixel covering ``footprint`` (N,) metres; grid: the sample's noise lattice.
    Channel rows, not (N, 3) pixels: NumPy broadcasts a (N, 1) factor over 3 channels, and
    scatters (N, 3) rows through a mask, several times slower."""
    rows = np.asarray(base, dtype=np.float32)[:, None]
    if material == "tiles":
        ua, ub = a / size, b / size
        cell_a, cell_b = np.floor(ua), np.floor(ub)
        parity = (cell_a + cell_b) % 2
        grout = (np.abs(ua - cell_a - 0.5) > 0.47) | (np.abs(ub - cell_b - 0.5) > 0.47)
        factor = np.where(parity > 0, np.float32(1.08), np.float32(0.92)) + 0.04 * _noise(grid, cell_a * 7.1, cell_b * 3.3)
        factor = np.where(grout, np.float32(0.7), factor)
        w = _fade(footprint, size * 0.06)  # the grout fades first, then the checker
        w2 = _fade(footprint, size)
        factor = 1.0 + (np.where(grout, np.float32(0.92), factor) - 1.0) * w2 + (factor - np.where(grout, np.float32(0.92), factor)) * w
        return rows * factor[None].astype(np.float32)
    if material == "wood":  # planks along a, with grain
        plank = np.floor(b / size)
        shade_plank = 1.0 + 0.12 * _noise(grid, plank * 5.3, plank * 1.7)
        grain = 0.08 * np.sin(b / size * 2 * np.pi * 6 + 3 * _noise(grid, a * 2.0, b * 8.0))
        seam = np.abs(b / size - plank - 0.5) > 0.46
        factor = np.where(seam, np.float32(0.75), shade_plank + grain * _fade(footprint, size / 6))
        factor = 1.0 + (factor - 1.0) * _fade(footprint, size)
        return rows * factor[None].astype(np.float32)
    if material == "grass":
        fine = _noise(grid, a * 25.0, b * 25.0) * _fade(footprint, 0.04)
        coarse = _noise(grid, a * 0.7 + 17.0, b * 0.7 + 5.0)
        factor = 1.0 + 0.3 * fine + 0.2 * coarse
        tint = np.stack([1.0 + 0.15 * coarse, np.ones(len(a), np.float32), 1.0 - 0.1 * coarse])
        return rows * (factor[None] * tint).astype(np.float32)
    if material == "asphalt":
        speck = _noise(grid, a * 60.0, b * 60.0) * _fade(footprint, 0.017)
        factor = 1.0 + 0.25 * speck + 0.1 * _noise(grid, a * 0.5, b * 0.5)
        return rows * factor[None].astype(np.float32)
    amount = 0.06 if material == "plaster" else 0.03  # plaster, paint: low-frequency unevenness
    factor = 1.0 + amount * _noise(grid, a * 3.0, b * 3.0) + 0.5 * amount * _noise(grid, a * 11.0, b * 11.0)
    return rows * factor[None].astype(np.float32)


def shade_scene(layers: dict, world: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """(H, W, 3) float32 in [0, ~1]: the lit, textured scene and sky behind the subjects, and the
    drawn materials' labels.

    Shaded on every other pixel (the pixels (2j, 2i), with K halved to match) and resampled to the
    image exactly (pixel x reads half-resolution x / 2): a quarter of the per-pixel work, and
    shadow edges a pixel soft. Behind the subjects, whose pixels the composite blends with the
    scene along their outline, the ground plane (or the sky) seen there is shaded.
    """
    inst = np.ascontiguousarray(layers["scene_instance"][::2, ::2])
    depth = np.ascontiguousarray(layers["depth"][::2, ::2])
    full_h, full_w = layers["scene_instance"].shape
    # the pixels (2j, 2i), copied by OpenCV where that is exact (even sides): 5x faster for 3 channels
    normal = cv2.resize(layers["normal"], (full_w // 2, full_h // 2), interpolation=cv2.INTER_NEAREST) \
        if full_h % 2 == 0 and full_w % 2 == 0 else np.ascontiguousarray(layers["normal"][::2, ::2])
    sunlit = layers["sunlit"][::2, ::2]
    K = np.diag([0.5, 0.5, 1.0]) @ np.asarray(world["K"], dtype=np.float64)
    names = world["instance_names"]
    floor = next((i for i, n in enumerate(names) if n in ("ground", "floor")), None)
    behind = (layers["mask"][::2, ::2] > 0) & (inst == 0)
    if floor is not None and behind.any():  # the ground behind the subjects, analytically
        R, t = np.asarray(world["R"], dtype=np.float64), np.asarray(world["t"], dtype=np.float64)
        up, height = R[:, 2], float(-R[:, 2] @ t)
        rows, cols = np.nonzero(behind)
        rays = np.stack([cols, rows, np.ones_like(cols)], 1) @ np.linalg.inv(K).T
        along = -height / (rays @ up)
        seen = along > 0
        rows, cols = rows[seen], cols[seen]
        inst[rows, cols] = floor
        depth[rows, cols] = along[seen]
        normal[rows, cols] = up.astype(np.float32)
        sunlit = sunlit.copy()
        sunlit[rows, cols] = 255
    half, labels = _shade_scene_at(inst, depth, normal, sunlit, K, world, rng)
    out = cv2.warpAffine(half, np.float32([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]), (full_w, full_h),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    return out, labels


def _shade_scene_at(inst: np.ndarray, depth: np.ndarray, normal: np.ndarray, sunlit: np.ndarray, K: np.ndarray,
                    world: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """(H, W, 3) float32 in [0, ~1]: scene pixels (inst > 0) lit and textured, the others sky;
    inst (H, W) uint8 scene instance ids, depth (H, W), normal (H, W, 3) camera frame, sunlit (H, W)
    uint8, K (3, 3) of this grid; and the drawn materials' labels.

    Per-pixel geometry is computed on whole float32 image planes (no gathers): with K's zero skew,
    pixel (c, r) at depth z is the camera point z ((c - cx) / fx, (r - cy) / fy, 1).
    """
    height, width = inst.shape
    names = world["instance_names"]
    materials = choose_materials(rng, world["kind"], names, world["instance_albedo"])
    grid = rng.uniform(-1.0, 1.0, (_NOISE_CELLS, _NOISE_CELLS)).astype(np.float32)
    R, t = (np.asarray(world[k], dtype=np.float64) for k in ("R", "t"))
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x = ((np.arange(width) - cx) / fx).astype(np.float32)[None, :]  # ray (x, y, 1) per pixel
    y = ((np.arange(height) - cy) / fy).astype(np.float32)[:, None]
    inv_length = 1.0 / np.sqrt(x * x + y * y + np.float32(1.0))  # (H, W)
    up = np.asarray(world["up_cam"], dtype=np.float32)
    out = _sky(world, (up[0] * x + up[1] * y + up[2]) * inv_length)
    scene = inst > 0
    if not scene.any():
        return out, {"materials": {}}
    z = depth
    rt, origin = R.T.astype(np.float32), (-R.T @ t).astype(np.float32)  # camera -> world
    xz, yz = x * z, y * z
    wx, wy, wz = (rt[k, 0] * xz + rt[k, 1] * yz + rt[k, 2] * z + origin[k] for k in range(3))
    normal_world = np.abs(cv2.transform(normal, rt))  # (H, W, 3) |world normal|
    on_x = (normal_world[..., 0] >= normal_world[..., 1]) & (normal_world[..., 0] >= normal_world[..., 2])
    on_z = ~on_x & (normal_world[..., 2] >= normal_world[..., 1])
    a = np.where(on_x, wy, wx)  # texture axes: the plane across the dominant normal axis
    b = np.where(on_z, wy, wz)
    cosine = np.abs(normal[..., 0] * x + normal[..., 1] * y + normal[..., 2]) * inv_length
    footprint = z / (np.float32(fx) * inv_length * np.maximum(cosine, np.float32(0.05)))  # metres per pixel
    albedo = np.zeros((3, height * width), dtype=np.float32)  # channel planes (see texture)
    present = np.flatnonzero(np.bincount(inst.reshape(-1), minlength=256)[1:]) + 1  # scene ids shown
    for i in present:
        sel = inst == i
        material, base, size = materials[int(i)]
        rows, flat = texture(material, base, size, a[sel], b[sel], footprint[sel], grid), sel.reshape(-1)
        for channel in range(3):
            albedo[channel, flat] = rows[channel]
    sun = np.asarray(world["sun_cam"], dtype=np.float32)
    lit = sunlit.astype(np.float32) * np.float32(1.0 / 255.0)
    # cv2.transform with a (1, 3) matrix gives an (H, W) image: one channel, no trailing axis
    diffuse = np.maximum(cv2.transform(normal, sun[None]).reshape(height, width), np.float32(0.0)) * lit
    facing_up = cv2.transform(normal, up[None]).reshape(height, width)
    ambient = np.float32(world["ambient"]) * (np.float32(0.75) + np.float32(0.25) * facing_up)
    shading = ambient + np.float32(1.0 - world["ambient"]) * diffuse
    albedo *= shading.reshape(1, -1)
    cv2.copyTo(cv2.merge([plane.reshape(height, width) for plane in albedo]), scene.view(np.uint8), out)
    used = {names[i]: materials[i][0] for i in present}
    return out, {"materials": used}


def _sky(world: dict, up: np.ndarray) -> np.ndarray:
    """(H, W, 3) sky gradient from the sine of each pixel ray's elevation ``up`` (H, W)."""
    horizon, zenith = world["sky"] if world.get("sky") is not None else ([0.75, 0.78, 0.8], [0.55, 0.6, 0.7])
    horizon, zenith = np.asarray(horizon, np.float32), np.asarray(zenith, np.float32)
    t = np.sqrt(np.clip(up, 0.0, 1.0))[..., None]
    # horizon + t (zenith - horizon) per channel, as one OpenCV transform of the (H, W, 1) image
    # (NumPy broadcasting (H, W, 1) over 3 channels costs five times as much)
    return cv2.transform(t, np.stack([zenith - horizon, horizon], axis=1))
