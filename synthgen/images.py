"""Single-image samples: subjects -> cameras -> render -> prompt (CPU), generate -> filter
(device), one shard record each.

A sample is a plain dict the stages add keys to: ``index, attempt, seed`` -> ``subject`` ->
``camera, camera_draw`` -> ``layers, keypoints_2d, keypoints_3d`` -> ``labels`` (a view record of
:mod:`synthgen.labels` with one instance) -> ``prompt`` -> ``image, appearance`` -> ``filter``.
:mod:`synthgen.engine` runs the CPU half ahead of the device half and writes the shards.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from synthgen import encode
from synthgen.cameras import Camera, amodal_bbox, sample_camera, sample_viewpoint_camera
from synthgen.formats import hmr2
from synthgen.generate import build_image_backend
from synthgen.labels import instance_record, view_record
from synthgen.recipe import Histogram, Recipe, draw_count, recipe_hash
from synthgen.render import layers as layer_ops
from synthgen.render import layers_from_raster, rasterize, rasterize_with_scene, render_layers
from synthgen.render.culling import closed_outward
from synthgen.render.raster_gl import pixel_box
from synthgen.render.shadow import draw_sun, sun_visibility
from synthgen.groups import combined_mesh, place_members
from synthgen.scene import (GROUND_HALF_M, SCENE_PART_NAMES, SceneMesh, WorldParams, build_scene, ground_contact,
                            scene_record, shadow_casters, world_light)
from synthgen.seeding import attempt_seed, label_threads, member_seed, sample_rng, sample_seed
from synthgen.subjects.base import PosedSubject
from synthgen.subjects import build_subject_model, subject_part_names

log = logging.getLogger(__name__)

CAMERA_MIN_HEIGHT_M = 0.3  # with scene geometry, cameras stay this far above the ground
CHUNK = 16  # samples posed together (one fixed body-model batch), handed to a loader worker together
SUBJECT_ID = 1  # the first (or only) subject's id in ``instances`` and the instance layer


def control_plan(recipe: Recipe) -> list[dict[str, Any]]:
    """Per ControlNet: its model, scale, resolved encoding and where its input is stored.

    ``stored_as`` is the layer file when that file holds exactly what the ControlNet receives
    (same layer, same encoding), else ``control_<i>.png``, written beside the layers. Empty for
    backends other than controlnet.
    """
    if recipe.backend.kind != "controlnet":
        return []
    render = recipe.render
    stored = {"normal": {"layer": "normal", "normal": render.normal_convention,
                         "background": render.normal_background},
              "edges": {"layer": "edges", "edges": render.edges_source,
                        "canny": [render.canny_low, render.canny_high]},
              "skeleton": {"layer": "skeleton"}, "mask": {"layer": "mask"}}
    out = []
    for i, unit in enumerate(recipe.backend.controlnet.controlnets):
        encoding = unit.resolved_encoding(render)
        same = unit.layer in recipe.output.layers and stored.get(unit.layer) == encoding
        out.append({"model": unit.model, "scale": unit.scale, "encoding": encoding,
                    "stored_as": f"{unit.layer}.png" if same else f"control_{i}.png"})
    return out


class ImageFactory:
    """Makes the single-image samples of one recipe in this process (models built once, here).

    ``cpu_only`` builds just the CPU stages (what loader workers need); otherwise the image
    backend and filter are built too, on ``device``.
    """

    cpu_chunk = CHUNK

    @staticmethod
    def uses_device(recipe: Recipe) -> bool:
        """Whether :meth:`finish` runs on the device (a diffusion backend) rather than the CPU."""
        return recipe.backend.kind == "controlnet"

    def __init__(self, recipe: Recipe, device: str | None = None, cpu_only: bool = False):
        self.recipe = recipe
        self.hash = recipe_hash(recipe)
        self.prompter = self._prompter()
        self.timing = {"input_wait": 0.0, "device": 0.0}
        self.backend = self.sample_filter = None
        if not cpu_only:
            self.backend = build_image_backend(recipe, subject_part_names(recipe.subject), device)
            self.sample_filter = self._filter(device)

    @functools.cached_property
    def controls(self) -> list[dict[str, Any]]:
        """See :func:`control_plan`."""
        return control_plan(self.recipe)

    @property
    def wants_ground(self) -> bool:
        """Whether a normal layer (stored or sent) draws the ground plane behind the subject."""
        return self.recipe.render.normal_background == "ground" or any(
            c["encoding"].get("background") == "ground" for c in self.controls)

    @property
    def wants_shaded(self) -> bool:
        """Whether the ``shaded`` layer is stored or feeds a ControlNet (it is not free to make)."""
        return "shaded" in self.recipe.output.layers or any(
            c["encoding"].get("edges") == "shaded" for c in self.controls)

    @staticmethod
    def encode_control(layers: dict[str, Any], control: dict[str, Any]) -> np.ndarray:
        """(H, W, 3) uint8: the stored layer itself when it is the input, else its own encoding."""
        if not control["stored_as"].startswith("control_"):
            image = layers[layer_ops.LAYER_KEYS[control["encoding"]["layer"]]]
            return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image)
        return layer_ops.control_from_layers(layers, control["encoding"])

    @functools.cached_property
    def subject_model(self):
        """Built on first use: a process whose loader workers do the posing never builds it."""
        return build_subject_model(self.recipe.subject)

    @property
    def batch_size(self) -> int:
        return self.backend.batch_size if self.backend is not None else 1

    def _prompter(self):
        if not (self.recipe.backend.kind == "controlnet" or self.recipe.prompt.prompts_file):
            return None
        from synthgen.prompt import PromptBuilder

        return PromptBuilder(self.recipe.prompt, subject_kind=self.recipe.subject.kind)

    def _filter(self, device: str | None):
        """The filter on the image backend's device (SAM beside the diffusion pipeline), SAM
        batched like the backend."""
        if self.recipe.backend.kind == "none":
            return None
        from synthgen.filter import SampleFilter

        device = getattr(self.backend, "device", None) or device or "cpu"
        controlnet = self.recipe.backend.kind == "controlnet"
        batch = self.batch_size if controlnet else 4  # a CPU backend's 32: too big for SAM
        halving = self.recipe.backend.controlnet.speed.oom_halving if controlnet else True
        return SampleFilter(self.recipe.filter, device, batch_size=batch, oom_halving=halving)

    # 1. subjects ------------------------------------------------------------------------------
    def pose_subjects(self, indices: list[int], attempt: int = 0) -> list[list]:
        """Per index, its group's posed members (one unless ``scene.people`` asks for more),
        every member posed in the same fixed-size body-model batches."""
        seed = attempt_seed(self.recipe.seed, attempt)
        people = self.recipe.scene.people
        sizes = [1 if people == (1, 1) else draw_count(sample_rng(seed, i, "group"), people)[0] for i in indices]
        draws = [self.subject_model.draw(member_seed(seed, k), i) for i, n in zip(indices, sizes) for k in range(n)]
        posed = iter(self.subject_model.pose(draws))
        return [[next(posed) for _ in range(n)] for n in sizes]

    # 2. cameras, 3. render, 4. prompt: the CPU stages of one sample ---------------------------
    def prepare(self, index: int, members: list, attempt: int = 0) -> dict[str, Any]:
        r = self.recipe
        seed = attempt_seed(r.seed, attempt)
        offsets = [np.zeros(3)]
        if len(members) > 1:  # a group: placed on the ground, no two surfaces within clearance_m
            members, offsets = place_members(members, self.subject_model.mesh,
                                             sample_rng(seed, index, "group_placement"), r.scene.spread_m,
                                             r.scene.clearance_m, r.scene.tries)
        sample: dict[str, Any] = {"index": index, "attempt": attempt, "seed": sample_seed(seed, index),
                                  "subjects": members, "placements": offsets, "subject": members[0]}
        rng = sample_rng(seed, index, "camera")
        vertices = np.concatenate([m.vertices for m in members]) if len(members) > 1 else members[0].vertices
        if r.camera.mode == "viewpoint":  # 3D-DST / PASCAL3D+ viewpoint about the subject's box centre
            camera, drawn = sample_viewpoint_camera(rng, r.camera, vertices, r.image.width, r.image.height)
        else:  # low-poly CAD objects need every vertex to be framed right
            points = vertices if r.subject.kind == "object" else vertices[::7]
            camera, drawn = sample_camera(rng, r.camera, points, r.image.width, r.image.height,
                                          CAMERA_MIN_HEIGHT_M if r.scene.has_geometry else None)
        sample.update(camera=camera, camera_draw=drawn)
        if r.scene.has_geometry:
            sample["scene"] = self.scene(sample_rng(seed, index, "scene"), offsets, camera)
        self.render(sample)
        sample["labels"] = self.labels(sample)
        if self.prompter is not None:
            prompt, negative = self.prompter.build(sample, sample_rng(seed, index, "prompt"))
            sample.update(prompt=prompt, negative_prompt=negative)
            sample["labels"].update(prompt=prompt, negative_prompt=negative)
        return sample

    def scene(self, rng: np.random.Generator, offsets: list[np.ndarray], camera: Camera) -> SceneMesh:
        """The scene geometry of a sample (``scene.geometry``), drawn from ``rng`` around the
        subjects' ground positions ``offsets`` and the camera (which stays inside a room and
        clear of objects)."""
        s = self.recipe.scene
        params = WorldParams(s.geometry_weights, s.room_size_m, s.room_height_m, s.objects, s.object_clearance_m,
                             s.tile_m)
        path = np.array([np.asarray(o, dtype=np.float64)[:2] for o in offsets] + [camera.position[:2]])
        return build_scene(params, rng, path, len(self.subject_model.part_names), ground_half_m=GROUND_HALF_M,
                           camera_height=float(camera.position[2]))

    def render(self, sample: dict[str, Any]) -> None:
        """One render pass of every member (and the scene geometry); per member keypoints and,
        where something may hide it, its unoccluded pixel count (a render of it alone)."""
        r, model, camera, members = self.recipe, self.subject_model, sample["camera"], sample["subjects"]
        meshes = [model.mesh(m) for m in members]
        per_member = [camera.to_camera(m.vertices) for m in members]
        vertices_cam, faces, face_parts, face_instance = combined_mesh(per_member, meshes)
        scene_normal = None
        if self.wants_ground:  # HumanWild's scene normals behind the person: the ground plane
            scene_normal = layer_ops.ground_plane_normals(camera.K, camera.cam_ext, camera.width, camera.height)
        scene = sample.get("scene")
        encoding = dict(normal_background=r.render.normal_background, edges_source=r.render.edges_source,
                        scene_normal=scene_normal, with_shaded=self.wants_shaded)
        if scene is not None and len(scene.faces):
            scene_cam = camera.to_camera(scene.vertices)
            raw = rasterize_with_scene(vertices_cam, faces, scene_cam, scene.faces, camera.K,
                                       camera.width, camera.height, r.render.backend)
            layers = layers_from_raster(raw, np.concatenate([face_parts, scene.face_part]),
                                        (r.render.canny_low, r.render.canny_high), r.render.normal_convention,
                                        subject_faces=len(faces), scene_in=tuple(r.render.scene_in), **encoding)
            tri = layers["triangle_id"]
            subject = (tri >= 0) & (tri < len(faces))
            layers["instance"] = subject.astype(np.uint8) if len(members) == 1 else \
                np.where(subject, face_instance[np.clip(tri, 0, len(faces) - 1)], 0).astype(np.uint8)
            layers["scene_in"] = tuple(r.render.scene_in)  # what the ControlNet inputs show too
            if r.backend.kind == "shaded":  # scene materials per pixel; one sun, the people's shadows
                per_face = np.zeros(len(faces) + len(scene.faces) + 1, np.uint8)  # subjects' and id -1: 0
                per_face[len(faces):-1] = scene.face_instance
                layers["scene_instance"] = np.take(per_face, tri)
                self._sunlight(sample, layers, vertices_cam, faces, scene_cam)
        else:
            layers = render_layers(vertices_cam, faces, face_parts, camera.K, camera.width, camera.height,
                                   r.render.backend, (r.render.canny_low, r.render.canny_high),
                                   r.render.normal_convention, **encoding)
            tri = layers["triangle_id"]
            layers["instance"] = (tri >= 0).astype(np.uint8) if len(members) == 1 else \
                np.where(tri >= 0, face_instance[np.maximum(tri, 0)], 0).astype(np.uint8)  # groups only
        keypoints_3d, keypoints_2d = [], []
        for k, member in enumerate(members):
            kp3d = camera.to_camera(member.keypoints_3d.astype(np.float64)).astype(np.float32)
            uv = camera.project(kp3d)
            vis = layer_ops.keypoint_visibility(uv, kp3d[:, 2], layers["parts"], layers["depth"],
                                                model.keypoint_parts, own=layers["instance"] == k + 1)
            keypoints_3d.append(kp3d)
            keypoints_2d.append(np.concatenate([uv, vis[:, None]], axis=1))
        layers["skeleton"] = functools.reduce(np.maximum, (
            layer_ops.draw_skeleton(kp2d, model.keypoint_names, camera.width, camera.height, model.skeleton_edges)
            for kp2d in keypoints_2d))
        alone = len(members) > 1 or (scene is not None and self._scene_may_hide(layers, scene, faces, vertices_cam,
                                                                                       camera.K))
        sample["unoccluded_pixels"] = [int(np.count_nonzero(layers["instance"] == 1))] if not alone else [
            int(np.count_nonzero(rasterize(v, f, camera.K, camera.width, camera.height, r.render.backend)["mask"]))
            for v, (f, _) in zip(per_member, meshes)]
        if self.controls:  # exactly what each ControlNet receives
            layers["controls"] = [self.encode_control(layers, control) for control in self.controls]
        layers.pop("scene_normal", None)
        layers.pop("scene", None)
        layers.pop("scene_in", None)
        sample.update(layers=layers, keypoints_3d=keypoints_3d[0], keypoints_2d=keypoints_2d[0],
                      member_keypoints=list(zip(keypoints_2d, keypoints_3d)), vertices_cam=vertices_cam,
                      faces=faces, face_instance=face_instance)

    def _scene_may_hide(self, layers: dict[str, Any], scene: SceneMesh, faces: np.ndarray,
                        vertices_cam: np.ndarray, K: np.ndarray) -> bool:
        """Whether scene geometry other than the ground (a wall, a table) shows inside the subject's
        projected box nearer than its farthest point: only then can it hide part of the subject (a
        ground hides no one standing on it), and its unoccluded pixels need a render of it alone."""
        ground = len(self.subject_model.part_names) + SCENE_PART_NAMES.index("ground")
        if not np.any(scene.face_part != ground):
            return False
        tri = layers["triangle_id"]
        height, width = tri.shape
        drawn = pixel_box(vertices_cam, K, width, height)  # the subjects' pixels lie inside it
        if drawn is None:
            return False
        x0, y0, x1, y1 = drawn
        box = (slice(y0, y1), slice(x0, x1))
        scene_face = tri[box] - len(faces)
        occluder = (scene_face >= 0) & (scene.face_part[np.clip(scene_face, 0, len(scene.faces) - 1)] != ground)
        return bool(np.any(occluder & (layers["depth"][box] < float(vertices_cam[:, 2].max()))))

    def _sunlight(self, sample: dict[str, Any], layers: dict[str, Any], vertices_cam: np.ndarray,
                  faces: np.ndarray, scene_cam: np.ndarray) -> None:
        """The shaded backend's world light: a sun drawn from the sample's ``light`` stream and
        ``layers["sunlit"]`` (H, W) uint8, 255 where a scene pixel sees the sun past the people and
        the scene's objects (one shadow-map pass, :func:`synthgen.render.shadow.sun_visibility`), 0
        in their shadows. scene_cam (S, 3): the scene's vertices in the camera frame."""
        camera, scene = sample["camera"], sample["scene"]
        seed = attempt_seed(self.recipe.seed, sample["attempt"])
        sun_world, ambient = draw_sun(sample_rng(seed, sample["index"], "light"))
        world = world_light(scene, sun_world, ambient, camera.R, camera.t, camera.K)
        casters = shadow_casters(scene)
        cull = None  # the people alone: culled when that is safe
        if len(casters):  # only their vertices (the map holds every vertex)
            cull = closed_outward(vertices_cam, faces)  # and the scene's boxes are wound outward
            used, local = np.unique(scene.faces[casters], return_inverse=True)
            faces = np.concatenate([faces, local.reshape(-1, 3) + len(vertices_cam)])
            vertices_cam = np.concatenate([vertices_cam, scene_cam[used].astype(np.float32)])
        layers["sunlit"] = sun_visibility(vertices_cam, faces, layers["depth"], layers["scene"], camera.K,
                                          world["sun_cam"], world["up_cam"], float(camera.position[2]),
                                          self.recipe.render.backend, step=2,  # the backend lights every other pixel
                                          cull_back_faces=cull)
        sample["world"] = world

    def labels(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The sample's view record (an instance per member) with the sample-level fields."""
        camera, model = sample["camera"], self.subject_model
        instances = []
        for k, (member, offset, (kp2d, kp3d)) in enumerate(zip(sample["subjects"], sample["placements"],
                                                               sample["member_keypoints"])):
            own = sample["layers"]["instance"] == k + 1
            # the model's parameters describe it before placement: its camera labels see it through
            # the camera moved by -offset (x_cam = R (x + offset) + t)
            at_origin = Camera(camera.K, camera.R, camera.t + camera.R @ offset, camera.width, camera.height)
            unmoved = PosedSubject(member.vertices - offset.astype(np.float32),
                                   member.keypoints_3d - offset.astype(np.float32), member.params, member.arrays)
            record = instance_record(k + 1, self.recipe.subject.kind, model.name, kp2d, kp3d, model.keypoint_names,
                                     own, member.params, model.camera_labels(unmoved, at_origin, kp2d, kp3d))
            seen, whole = int(np.count_nonzero(own)), sample["unoccluded_pixels"][k]
            record.update(bbox_amodal=amodal_bbox(camera, member.vertices),
                          visible_fraction=round(seen / whole, 6) if whole else 0.0,
                          placement_world=np.float32(offset).tolist())
            if "scene" in sample:
                faces, parts = model.mesh(member)
                record.update(ground_contact(member.vertices, faces, parts, model.part_names))
            instances.append(record)
        out = {
            "index": sample["index"], "attempt": sample["attempt"], "seed": sample["seed"],
            "recipe_hash": self.hash,
            **view_record(camera.width, camera.height, camera.K, camera.cam_ext, instances),
            "camera": {k: float(np.float32(v)) for k, v in sample["camera_draw"].items() if k != "bins"},
            "part_names": model.part_names,
            "conventions": self.conventions,
        } | self._bins(sample)
        if "scene" in sample:  # its parts follow the subject's in the parts layer
            out["part_names"] = list(model.part_names) + SCENE_PART_NAMES
            out["scene"] = scene_record(sample["scene"], camera.R, camera.t)
        return out

    def _bins(self, sample: dict[str, Any]) -> dict[str, Any]:
        """``{"bins": {attribute: bin}}`` of the recipe's weighted attributes (none: nothing), from the
        camera's draw, the first member's body draw and the group size."""
        bins = dict(sample["camera_draw"].get("bins", {})) | sample["subjects"][0].params.get("bins", {})
        people = self.recipe.scene.people
        if isinstance(people, Histogram):  # the same draw as pose_subjects made
            seed = attempt_seed(self.recipe.seed, sample["attempt"])
            bins["scene.people"] = draw_count(sample_rng(seed, sample["index"], "group"), people)[1]
        return {"bins": bins} if bins else {}

    @functools.cached_property
    def conventions(self) -> dict[str, Any]:
        """How every stored layer is encoded, and what each ControlNet received (``controls``)."""
        render = self.recipe.render
        out = {"camera": "opencv", "depth": "z_mm_uint16_0_is_background",
               "normal": render.normal_convention, "normal_background": render.normal_background,
               "edges": {"source": render.edges_source, "canny": [render.canny_low, render.canny_high]},
               "pixel_centre": "integer", "visibility": "coco_0_1_2",
               "instance": "0 background, else instances[].id"}
        if self.recipe.scene.has_geometry:
            out["instance"] = "0 background or scene geometry, else instances[].id"
            out["scene_in"] = list(render.scene_in)
        if self.controls:
            out["controls"] = self.controls
        return out

    def prepared(self, indices: list[int], attempt: int = 0) -> Iterator[dict[str, Any]]:
        """CPU stages; a sample that raises comes out as ``{"index", "error"}`` instead."""
        for start in range(0, len(indices), CHUNK):
            chunk = indices[start:start + CHUNK]
            with label_threads():
                subjects = self._pose_or_errors(chunk, attempt)
            for index, subject in zip(chunk, subjects):
                if isinstance(subject, Exception):
                    yield {"index": index, "error": f"{type(subject).__name__}: {subject}"}
                    continue
                try:
                    with label_threads():
                        sample = self.prepare(index, subject, attempt)
                except Exception as exc:  # one bad sample must not stop the run
                    log.exception("sample %d failed", index)
                    sample = {"index": index, "error": f"{type(exc).__name__}: {exc}"}
                yield sample

    def _pose_or_errors(self, chunk: list[int], attempt: int) -> list:
        try:
            return self.pose_subjects(chunk, attempt)
        except Exception:
            if len(chunk) == 1:
                raise
        out = []
        for index in chunk:  # isolate the failing sample(s)
            try:
                out.extend(self.pose_subjects([index], attempt))
            except Exception as exc:
                log.exception("sample %d failed while posing", index)
                out.append(exc)
        return out

    # what crosses from a loader process to the device process ----------------------------------
    @functools.cached_property
    def device_layers(self) -> frozenset[str]:
        """Render-dict keys that the device stages and the writer read: the stored layers, the
        filter's ``mask`` and ``instance``, each ControlNet's input (``controls``), and the
        shaded backend's float ``normal`` and ``parts``."""
        keys = {layer_ops.LAYER_KEYS[name] for name in self.recipe.output.layers} | {"mask", "instance", "controls"}
        if self.recipe.backend.kind == "shaded":
            keys |= {"normal", "parts"}
        return frozenset(keys)

    # what the shaded backend reads to light and texture a scene (generate.materials.shade_scene)
    SCENE_SHADING_LAYERS = frozenset({"depth", "scene_instance", "sunlit"})

    def transferable(self, sample: dict[str, Any]) -> dict[str, Any]:
        """``sample`` without what only the CPU stages used (float depth, triangle ids, the float
        normals unless the shaded backend shades them, the float depth unless it shades a scene,
        other unstored layers, and the meshes
        unless ``output.vertices``): what a loader worker sends to the device process (about a
        third of the pickled bytes of a 512x512 sample). The records written are the same."""
        if "error" in sample:
            return sample
        drop = set() if self.recipe.output.vertices else {"vertices_cam", "faces", "face_instance", "subjects",
                                                           "subject"}
        out = {key: value for key, value in sample.items() if key not in drop}
        keep = self.device_layers | (self.SCENE_SHADING_LAYERS if "world" in sample else frozenset())
        out["layers"] = {key: value for key, value in sample["layers"].items() if key in keep}
        return out

    # 5. generate, 6. filter: batched on the device ---------------------------------------------
    def finish(self, batch: list[dict[str, Any]]) -> None:
        """Images and filter scores for a batch of prepared samples (errors pass through)."""
        ok = [s for s in batch if "error" not in s]
        if not ok:
            return
        try:
            self._generate_and_filter(ok)
        finally:  # images leave the device as uint8 NumPy; nothing written holds device memory
            for sample in ok:
                sample.pop("image_device", None)
        for key, seconds in self.device_timing.items():
            self.timing[key] = seconds

    @property
    def device_timing(self) -> dict[str, float]:
        """Device seconds so far: ``diffusion`` (and ``compile``) of the backend, ``sam`` of the filter."""
        out = dict(getattr(self.backend, "timing", {}))
        aligner = getattr(self.sample_filter, "aligner", None)
        return out | ({"sam": aligner.timing.get("sam", 0.0)} if aligner is not None else {})

    def _generate_and_filter(self, ok: list[dict[str, Any]]) -> None:
        self.backend.generate(ok)
        ok = [s for s in ok if "error" not in s]
        for sample in ok:
            sample["labels"]["appearance"] = sample.get("appearance")
        if self.sample_filter is None or not ok:
            return
        for sample, verdict in zip(ok, self.sample_filter.score(ok)):
            sample["filter"] = verdict
            sample["labels"]["filter"] = verdict
            if verdict.get("dropped"):  # filter.sam.group_policy=drop: those people's labels set aside
                labels = sample["labels"]
                labels["dropped_instances"] = [i for i in labels["instances"] if i["id"] in verdict["dropped"]]
                labels["instances"] = [i for i in labels["instances"] if i["id"] not in verdict["dropped"]]

    # 7. encode --------------------------------------------------------------------------------
    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.recipe.output
        record = {"__key__": f"{sample['index']:09d}", "json": encode.encode_json(sample["labels"])}
        if "hmr2" in out.formats:
            record[hmr2.MEMBER] = hmr2.encode(sample["labels"])
        if sample["image"] is not None:
            record["jpg"] = encode.encode_jpg(sample["image"], out.jpeg_quality)
        for name in out.layers:
            record[f"{name}.png"] = encode.encode_layer(name, sample["layers"][layer_ops.LAYER_KEYS[name]])
        for i, control in enumerate(self.controls):
            if control["stored_as"] == f"control_{i}.png":
                record[f"control_{i}.png"] = encode.encode_png(sample["layers"]["controls"][i])
        if out.vertices:  # every member's mesh; its model arrays prefixed by its id when several
            arrays = {"vertices": sample["vertices_cam"].astype(np.float32), "faces": sample["faces"].astype(np.int32),
                      "face_instance": sample["face_instance"]}
            members = sample["subjects"]
            for k, member in enumerate(members):
                arrays |= {(name if len(members) == 1 else f"instance{k + 1}_{name}"): value
                           for name, value in member.arrays.items()}
            record["npz"] = encode.encode_npz(arrays)
        return record
