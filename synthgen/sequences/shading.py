"""Weight-free images of sequence views: the single-image shaded backend's light set, materials
and shadows, with the sun fixed in the world for the whole sequence.

The body is lit by :func:`synthgen.generate.shaded.blinn_phong` (the single-image body model);
the scene by :func:`synthgen.generate.materials.shade_scene` (procedural tiles, grass, asphalt,
wood, plaster, paint; sun plus sky ambient; sky by ray elevation), with the shadows of the body
and the scene's objects from one shadow-map pass (:func:`synthgen.render.shadow.sun_visibility`).
The materials are drawn from a per-sequence seed, so every frame and camera sees the same ones.
"""

from __future__ import annotations

import numpy as np

from synthgen.generate.materials import shade_scene
from synthgen.generate.shaded import blinn_phong
from synthgen.render.culling import closed_outward
from synthgen.render.shadow import sun_visibility
from synthgen.scene import BODY_INSTANCE, SceneMesh, shadow_casters, world_light


def shade_view(layers: dict, face_albedo: np.ndarray, face_spec: np.ndarray, scene: SceneMesh, seq,
               R: np.ndarray, t: np.ndarray, K: np.ndarray, body_cam: np.ndarray, body_faces: np.ndarray,
               camera_height: float, backend: str) -> np.ndarray:
    """(H, W, 3) float32 linear-ish RGB in [0, ~1] of one pinhole render of body and scene.

    layers: the render's ``normal``, ``depth``, ``triangle_id`` and ``instance`` (H, W) uint8
    (0 none, :data:`BODY_INSTANCE` body, 2+ scene instances); face_albedo (F, 3) and face_spec (F,)
    float32 per raster face (only the body's are read); R (3, 3), t (3,): world -> camera;
    K (3, 3); body_cam (V, 3) float32 and body_faces (F_body, 3): the body in the camera frame (a
    shadow caster); camera_height: the camera's height above the floor (metres); seq: the
    sequence (``sun_world``, ``ambient``, ``material_seed``).
    """
    tri, instance = layers["triangle_id"], layers["instance"]
    height, width = tri.shape
    world = world_light(scene, seq.sun_world, seq.ambient, R, t, K)
    body = instance == BODY_INSTANCE
    scene_pixels = instance > BODY_INSTANCE
    casters_v, casters_f, cull = body_cam.astype(np.float32), body_faces, None
    chosen = shadow_casters(scene)
    if len(chosen):  # the scene's objects too, in the same pass (boxes wound outward)
        cull = closed_outward(casters_v, body_faces)
        used, local = np.unique(scene.faces[chosen], return_inverse=True)
        scene_cam = (scene.vertices[used] @ np.asarray(R).T + t).astype(np.float32)
        casters_f = np.concatenate([body_faces, local.reshape(-1, 3) + len(casters_v)])
        casters_v = np.concatenate([casters_v, scene_cam])
    sunlit = sun_visibility(casters_v, casters_f, layers["depth"], scene_pixels, K, world["sun_cam"],
                            world["up_cam"], camera_height, backend, step=2, cull_back_faces=cull)
    scene_layers = {"scene_instance": np.where(scene_pixels, instance, np.uint8(0)), "depth": layers["depth"],
                    "normal": layers["normal"], "sunlit": sunlit, "mask": body.view(np.uint8)}
    out, _ = shade_scene(scene_layers, world, np.random.default_rng(seq.material_seed))
    if body.any():
        ids = tri[body]
        out[body] = blinn_phong(layers["normal"][body], world["sun_cam"], face_albedo[ids], face_spec[ids],
                                world["ambient"])
    return out
