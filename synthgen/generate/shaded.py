"""The weight-free image backend: a shaded CG body over a background, SURREAL-style.

Materials are drawn per sample (skin tone, clothing colours and coverage, fabric texture), lit by
one directional light plus ambient with Blinn-Phong highlights, composited with an antialiased
silhouette over a procedural background (or a crop of a user image), then given sensor noise.
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np

from synthgen.errors import UserError
from synthgen.recipe import ShadedConfig

# Monk-scale-like skin tones, light to dark, linear-ish sRGB in [0, 1].
SKIN_TONES = np.array([
    [0.96, 0.87, 0.80], [0.92, 0.79, 0.69], [0.87, 0.72, 0.60], [0.78, 0.60, 0.47],
    [0.68, 0.50, 0.37], [0.56, 0.39, 0.28], [0.44, 0.30, 0.21], [0.33, 0.23, 0.17],
    [0.25, 0.18, 0.14],
])
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _random_colour(rng: np.random.Generator, saturation: tuple[float, float] = (0.1, 0.8)) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*saturation) * 255, rng.uniform(40, 230)]]],
                   dtype=np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64) / 255.0


def draw_appearance(rng: np.random.Generator, part_names: list[str]) -> dict:
    """Per-part albedo (P, 3) in [0, 1], specular strengths (P,), and a JSON-ready summary."""
    skin = np.clip(SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.95, 1.05, 3), 0, 1)
    top, bottom = _random_colour(rng), _random_colour(rng)
    shoes = _random_colour(rng, (0.0, 0.4)) * 0.6
    long_sleeves, long_legs = bool(rng.random() < 0.5), bool(rng.random() < 0.7)
    albedo = np.tile(skin, (len(part_names), 1))
    spec = np.full(len(part_names), 0.12)
    for p, name in enumerate(part_names):
        if name in ("torso",) or "upper_arm" in name or ("forearm" in name and long_sleeves):
            albedo[p], spec[p] = top, 0.04
        elif "thigh" in name or ("shin" in name and long_legs):
            albedo[p], spec[p] = bottom, 0.04
        elif "foot" in name:
            albedo[p], spec[p] = shoes, 0.2
    albedo[0] = 0.0
    summary = {"skin_rgb": np.round(skin, 3).tolist(), "top_rgb": np.round(top, 3).tolist(),
               "bottom_rgb": np.round(bottom, 3).tolist(), "long_sleeves": long_sleeves,
               "long_legs": long_legs}
    return {"albedo": albedo, "specular": spec, "summary": summary}


def _value_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 4) -> np.ndarray:
    """(H, W) float32 smooth noise in about [-1, 1]: random grids of 4, 8, 16... cells, octave o
    weighted 2^-o, summed on the finest grid and upsampled once (one image-sized resize, not one
    per octave)."""
    finest = 2 ** (octaves + 1)
    total = np.zeros((finest, finest), dtype=np.float32)
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        total += cv2.resize(grid, (finest, finest), interpolation=cv2.INTER_CUBIC) / (2 ** o)
    total /= 1.9
    return cv2.resize(total, (width, height), interpolation=cv2.INTER_CUBIC)


def procedural_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: wall/sky gradient above a floor, textured, with clutter blocks.

    Drawn at half resolution and upsampled: it is blurred (out of focus) anyway.
    """
    full = (width, height)
    width, height = max(8, width // 2), max(8, height // 2)
    wall_a, wall_b, floor = _random_colour(rng), _random_colour(rng), _random_colour(rng, (0.0, 0.5))
    ys = np.linspace(0.0, 1.0, height)[:, None]
    column = wall_a * (1 - ys) + wall_b * ys  # (H, 3): one colour per row
    horizon = int(height * rng.uniform(0.45, 0.85))
    column[horizon:] = floor * np.linspace(0.8, 1.1, height - horizon)[:, None]
    image = np.repeat(column.astype(np.float32)[:, None, :], width, axis=1)
    for _ in range(int(rng.integers(0, 6))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, horizon))
        w, h = int(rng.integers(width // 12, width // 3)), int(rng.integers(height // 12, height // 2))
        cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), _random_colour(rng).tolist(), -1)
    texture = _value_noise(rng, height, width)[..., None]
    image = image * np.float32(1.0 + rng.uniform(0.05, 0.25) * texture)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.5))
    np.clip(image, 0, 1, out=image)  # before upsampling: linear interpolation stays in [0, 1]
    return cv2.resize(image, full, interpolation=cv2.INTER_LINEAR)


def folder_background(rng: np.random.Generator, folder: str, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]: a random crop of a random image from ``folder``."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"backend.shaded.background_dir={folder!r} holds no images "
                                f"({', '.join(_IMAGE_SUFFIXES)})")
    path = files[int(rng.integers(len(files)))]
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"background image {path} cannot be decoded")
    h, w = bgr.shape[:2]
    scale = max(width / w, height / h) * rng.uniform(1.0, 1.5)
    resized = cv2.resize(bgr, (max(width, int(w * scale + 1)), max(height, int(h * scale + 1))))
    y0 = int(rng.integers(0, resized.shape[0] - height + 1))
    x0 = int(rng.integers(0, resized.shape[1] - width + 1))
    crop = resized[y0:y0 + height, x0:x0 + width, ::-1]
    return crop.astype(np.float32) / 255.0


# Luminance sensor noise, sigma 1 % of full scale: 256 equiprobable Gaussian quantiles, so one
# random byte per pixel draws it (a float Gaussian per pixel costs five times as much). The
# +0.5 rounds the final float -> uint8 conversion to nearest.
NOISE_SIGMA = 2.55
_NOISE_LEVELS = np.array([NormalDist().inv_cdf((k + 0.5) / 256) * NOISE_SIGMA + 0.5 for k in range(256)],
                         dtype=np.float32)


def sensor_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32, the same in every channel (luminance noise): Gaussian of sigma
    :data:`NOISE_SIGMA` (0-255 scale) plus 0.5."""
    levels = rng.integers(0, 256, (height, width), dtype=np.uint8)
    return cv2.LUT(cv2.merge([levels, levels, levels]), _NOISE_LEVELS)


def _light(rng: np.random.Generator) -> np.ndarray:
    """(3,) unit direction toward the light, OpenCV camera axes (from above, roughly frontal)."""
    d = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-1.0, -0.2), rng.uniform(-1.0, -0.3)])
    return d / np.linalg.norm(d)


def blinn_phong(normals: np.ndarray, light: np.ndarray, albedo: np.ndarray, specular: np.ndarray,
                ambient: float) -> np.ndarray:
    """Lambert + Blinn-Phong (exponent 32) colour of N surface points seen from the camera.

    normals: (N, 3) float32 unit, camera frame; light: (3,) unit toward the light, camera frame;
    albedo: (N, 3) float32; specular: (N,) float32. Returns (N, 3) float32 in [0, ~1].
    """
    shading, spec = blinn_phong_terms(normals, light, specular, ambient)
    return albedo * _per_channel(shading) + _per_channel(spec)


def blinn_phong_terms(normals: np.ndarray, light: np.ndarray, specular: np.ndarray,
                      ambient: float) -> tuple[np.ndarray, np.ndarray]:
    """The two terms of :func:`blinn_phong`, (N,) float32 each: the diffuse-plus-ambient factor
    of the albedo and the specular light added to every channel."""
    light = np.asarray(light, dtype=np.float32)
    half = light + np.float32([0.0, 0.0, -1.0])  # the camera looks along +z
    half /= np.linalg.norm(half)
    diffuse = np.maximum(normals @ light, np.float32(0.0))
    spec = normals @ half
    spec[spec < 0.5] = 0.0  # 0.5 ** 32 ~ 2e-10: zero it before squaring (no denormals)
    for _ in range(5):  # ** 32
        spec *= spec
    shading = np.float32(ambient) + np.float32(1.0 - ambient) * diffuse
    spec *= specular
    return shading, spec


def _per_channel(values: np.ndarray) -> np.ndarray:
    """(N,) -> (N, 3), each value repeated: NumPy broadcasts a (N, 1) operand over 3 channels
    several times slower than it adds two contiguous (N, 3) arrays."""
    return np.repeat(values, 3).reshape(-1, 3)


def shade(normal: np.ndarray, parts: np.ndarray, mask: np.ndarray, appearances: list[dict],
          light: np.ndarray, ambient: float, texture: np.ndarray | None = None,
          instance: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) float32 lit body colour in [0, ~1] (0 outside the mask).

    normal: (H, W, 3) camera-frame unit normals; parts: (H, W) uint8; mask: (H, W) bool;
    appearances: one per subject (:func:`draw_appearance`), subject k's pixels are
    ``instance == k + 1`` (instance (H, W) uint8; None: one subject);
    texture: optional (H, W) float32 multiplicative fabric/skin variation around 0.
    """
    out = np.zeros(normal.shape, dtype=np.float32)
    mask8 = mask.view(np.uint8)
    x, y, w, h = cv2.boundingRect(mask8)
    if not (w and h):
        return out
    # every pixel of the subject's box, then copied through the mask: boolean gathers and
    # scatters of (H, W, 3) images cost more than the arithmetic on the whole box; the colour is
    # made per channel plane (a (N, 3) gather of part colours costs three (N,) ones twice over)
    box = (slice(y, y + h), slice(x, x + w))
    albedo = np.stack([a["albedo"] for a in appearances]).astype(np.float32)  # (S, P, 3)
    specular = np.stack([a["specular"] for a in appearances]).astype(np.float32).reshape(-1)
    which = parts[box].reshape(-1).astype(np.intp)  # (subject, part) -> row of the (S * P) tables
    if instance is not None:
        which += np.maximum(instance[box].reshape(-1).astype(np.intp) - 1, 0) * albedo.shape[1]
    planes = [np.take(albedo[..., channel].reshape(-1), which) for channel in range(3)]
    if texture is not None:
        grain = texture[box].reshape(-1) + np.float32(1.0)
        for plane in planes:
            plane *= grain
    shading, spec = blinn_phong_terms(normal[box].reshape(-1, 3), light, np.take(specular, which), ambient)
    lit = cv2.merge([(plane * shading + spec).reshape(h, w) for plane in planes])
    out[box] = cv2.copyTo(lit, mask8[box], out[box])
    return out


def render_shaded(layers: dict, part_names: list[str], appearance_rng: np.random.Generator,
                  background_rng: np.random.Generator, config: ShadedConfig,
                  world: dict | None = None) -> tuple[np.ndarray, dict]:
    """Shaded image (H, W, 3) uint8 RGB from render layers, and the drawn appearance labels.

    world: None = the subjects over a backdrop (procedural or a folder's image), lit by a light
    drawn here; else the scene geometry's light and materials (``sample["world"]`` of
    :class:`synthgen.images.ImageFactory`: ``sun_cam``, ``ambient``, ``sky``, ``up_cam``, ``K``,
    ``R``, ``t``, ``instance_names``, ``instance_albedo``) with the layers
    ``scene_instance`` and ``sunlit``: scene and subjects lit by one sun and the sky, the scene
    textured (:mod:`synthgen.generate.materials`) with the subjects' shadows on it.
    """
    mask = layers["mask"] > 0
    height, width = mask.shape
    instance = layers.get("instance")
    count = max(1, int(instance.max())) if instance is not None else 1
    appearances = [draw_appearance(appearance_rng, part_names) for _ in range(count)]  # one per subject
    light, ambient = _light(appearance_rng), float(appearance_rng.uniform(0.25, 0.5))
    texture = _value_noise(appearance_rng, height, width, octaves=3)
    texture *= np.float32(0.04)
    parts = layers["parts"]
    if world is not None:  # the world's sun and sky light the people too
        from synthgen.generate.materials import shade_scene

        light, ambient = np.asarray(world["sun_cam"], dtype=np.float64), float(world["ambient"])
        parts = np.where(mask, parts, np.uint8(0))  # scene part ids lie past the subject's
    body = shade(layers["normal"], parts, mask, appearances, light, ambient, texture,
                 instance if count > 1 else None)
    if world is not None:
        background, scene_labels = shade_scene(layers, world, background_rng)
    elif config.background == "folder":
        background = folder_background(background_rng, config.background_dir, width, height)
    else:
        background = procedural_background(background_rng, width, height)
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0.6)
    image = cv2.blendLinear(body, background.astype(np.float32, copy=False), alpha, 1.0 - alpha)
    gain = np.float32(appearance_rng.uniform(0.85, 1.15) * 255.0)
    image *= gain  # in place: image-sized temporaries cost a page fault per 4 KiB
    image += sensor_noise(appearance_rng, height, width)
    labels = appearances[0]["summary"] | {"light_dir_cam": np.round(light, 4).tolist(),
                                          "ambient": round(ambient, 4)}
    if count > 1:  # the top-level colours are instance 1's
        labels["instances"] = [a["summary"] for a in appearances]
    if world is not None:
        labels["scene"] = scene_labels
    return np.clip(image, 0, 255, out=image).astype(np.uint8), labels
