"""What every subject model provides, and the world-frame convention subjects are posed in.

World frame (all subjects): metres, Z up, the ground is the plane z = 0, a subject's default
heading faces -Y. Cameras (:mod:`synthgen.cameras`) map this frame to OpenCV camera frames.
SMPL-family outputs (Y up, facing +Z) are rotated into it by :data:`SMPL_TO_WORLD`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from synthgen.points import bounds

BATCH = 16  # fixed forward batch of every body model: padding keeps each sample's arithmetic independent of the split

# Columns are SMPL's x (left), y (up), z (forward) axes written in the world frame.
SMPL_TO_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

# COCO-17 plus the six foot points of COCO-WholeBody, in that order.
KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_big_toe", "right_big_toe",
    "left_small_toe", "right_small_toe", "left_heel", "right_heel",
]

# Body parts written in the ``parts`` layer (0 is background).
PART_NAMES = [
    "background", "head", "torso", "left_upper_arm", "right_upper_arm", "left_forearm",
    "right_forearm", "left_hand", "right_hand", "left_thigh", "right_thigh", "left_shin",
    "right_shin", "left_foot", "right_foot",
]


def _keypoint_parts() -> list[tuple[int, ...]]:
    """For each keypoint, the parts whose surface may show it (used for the visibility code)."""
    by_name = {
        "nose": ("head",), "eye": ("head",), "ear": ("head",),
        "shoulder": ("torso", "{s}_upper_arm", "head"), "elbow": ("{s}_upper_arm", "{s}_forearm"),
        "wrist": ("{s}_forearm", "{s}_hand"), "hip": ("torso", "{s}_thigh"),
        "knee": ("{s}_thigh", "{s}_shin"), "ankle": ("{s}_shin", "{s}_foot"),
        "big_toe": ("{s}_foot",), "small_toe": ("{s}_foot",), "heel": ("{s}_foot", "{s}_shin"),
    }
    out = []
    for name in KEYPOINT_NAMES:
        side, _, joint = name.partition("_") if name.startswith(("left_", "right_")) else ("", "", name)
        parts = [p.format(s=side) for p in by_name[joint]]
        out.append(tuple(PART_NAMES.index(p) for p in parts))
    return out


KEYPOINT_PARTS = _keypoint_parts()

# Human models append their own joints (not surface points) after the 23 COCO keypoints, where the
# model has them: what HMR2's MidHip / neck / pelvis / thorax / spine / jaw / head / head-top slots
# and root-relative 3D labels need. Name -> the SMPL joint it is (Anny: the bone retargeted from
# it, synthgen.subjects.retarget); ``head_top`` is the template's highest vertex (crown).
BODY_JOINTS = {"pelvis": "pelvis", "spine": "spine2", "thorax": "spine3", "neck": "neck",
               "head": "head", "jaw": "jaw", "head_top": None}
_BODY_JOINT_PARTS = {"pelvis": ("torso", "left_thigh", "right_thigh"), "spine": ("torso",),
                     "thorax": ("torso",), "neck": ("torso", "head"), "head": ("head",),
                     "jaw": ("head",), "head_top": ("head",)}


def human_keypoints(joints: list[str]) -> tuple[list[str], list[tuple[int, ...]]]:
    """Keypoint names and parts of a human model: :data:`KEYPOINT_NAMES` then ``joints`` (names
    from :data:`BODY_JOINTS` the model has, in that order)."""
    joints = [j for j in BODY_JOINTS if j in joints]
    parts = [tuple(PART_NAMES.index(p) for p in _BODY_JOINT_PARTS[j]) for j in joints]
    return KEYPOINT_NAMES + joints, KEYPOINT_PARTS + parts


@dataclass
class PosedSubject:
    """One posed subject in the world frame.

    vertices: (V, 3) float32 metres. keypoints_3d: (K, 3) float32 metres.
    params: JSON-ready model parameters in the model's own terms (written to the labels).
    """

    vertices: np.ndarray
    keypoints_3d: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # float32 arrays for the npz


class SubjectModel(Protocol):
    """What every body/animal/object model provides; nothing outside ``subjects/`` needs more.

    Per sample: :meth:`draw` every random choice, :meth:`pose` in batches, :meth:`mesh` to
    rasterise, :meth:`camera_labels` once a camera sees it. ``skeleton_edges`` says how the
    ``skeleton`` layer is drawn: None = OpenPose-18 from COCO keypoint names (humans), else
    pairs of keypoint names (the model's own limb graph).
    """

    name: str
    part_names: list[str]
    keypoint_names: list[str]
    keypoint_parts: list[tuple[int, ...]]   # per keypoint, the parts whose surface may show it
    skeleton_edges: list[tuple[str, str]] | None

    def draw(self, recipe_seed: int, index: int) -> dict[str, Any]:
        """Every random choice for sample ``index`` (uses only synthgen.seeding streams)."""

    def pose(self, draws: list[dict[str, Any]]) -> list[PosedSubject]:
        """Run the model on drawn parameters, placed on the ground plane."""

    def mesh(self, subject: PosedSubject) -> tuple[np.ndarray, np.ndarray]:
        """(F, 3) int32 faces and (F,) uint8 part ids (into ``part_names``) of a posed subject."""

    def camera_labels(self, subject: PosedSubject, camera: Any, keypoints_2d: np.ndarray,
                      keypoints_3d: np.ndarray) -> dict[str, Any]:
        """Labels in the model's own terms that need the camera (``camera``: K, R, t, cam_ext,
        width, height; keypoints (K, 3) in that camera); {} when there are none."""


class PosesOverTime(SubjectModel, Protocol):
    """A human body model that a motion can drive (body-worn camera sequences).

    What :mod:`synthgen.sequences` uses of a body model besides :class:`SubjectModel`; the rig
    (sockets, socket frames) stays in sequences. Each family works in its own terms, picked by
    ``name`` (results are float32, fixed padded batches, no grad, so a frame's bits never depend
    on how many frames are posed):

    - Anny (``name == "anny"``, :class:`synthgen.subjects.anny_body.AnnyBody`): ``num_bones`` (J);
      ``smpl_joint_bones()`` -> {SMPL joint name: bone index}; ``retarget_smpl(rotations
      (T, 24, 3, 3))`` -> (T, J, 3, 3) local-ref rotations; ``forward_frames(pose (N, J, 4, 4),
      phenotype)`` -> ``vertices`` (N, V, 3), ``keypoints`` (N, K, 3), ``bone_poses`` (N, J, 4, 4).
    - SMPL / SMPL-H / SMPL-X (:class:`synthgen.subjects.smpl_body.SmplBody`):
      ``num_body_pose_joints``; ``forward_frames(params)`` (N dicts of float32 ``betas``,
      ``global_orient``, ``body_pose`` axis-angle) -> SMPL-frame ``vertices`` (N, V, 3),
      ``keypoints`` (N, K, 3), ``joints`` (N, 22, 3).
    """

    faces: np.ndarray       # (F, 3) int32, one topology for every pose
    face_parts: np.ndarray  # (F,) uint8 ids into ``part_names``

    def bone_index(self, name: str) -> int:
        """Index of the model's bone/joint ``name`` (e.g. a rig socket's bone)."""

    def forward_frames(self, *inputs: Any) -> dict[str, np.ndarray]:
        """One body at N frames, inputs in the model's own terms (see the class docstring)."""

    def sequence_params(self, draw: dict[str, Any]) -> dict[str, Any]:
        """JSON-ready labels of a drawn body that hold for every frame of a sequence."""


def parts_from_skinning(weights: np.ndarray, bone_part: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-face part ids from skinning weights.

    weights: (V, J) dense skinning weights; bone_part: (J,) part id per bone; faces: (F, 3).
    Returns (F,) uint8: the part of each face's first vertex's dominant bone.
    """
    vertex_part = bone_part[np.argmax(weights, axis=1)]
    return vertex_part[faces[:, 0]].astype(np.uint8)


def ground_offset(vertices: np.ndarray) -> np.ndarray:
    """(3,) translation putting the lowest vertex on z = 0 and the x/y centre at the origin.

    vertices: (V, 3) world frame.
    """
    lo, hi = bounds(vertices)
    return np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]], dtype=np.float64)


def pose_in_fixed_batches(draws: list, batch: int, pose_batch) -> list:
    """Run ``pose_batch`` on chunks of at most ``batch`` (:data:`BATCH`) draws, each padded to exactly ``batch``.

    A body model's arithmetic can depend on its batch size; always calling it with the same
    size keeps every sample bit-identical whatever the split. ``pose_batch(chunk, padded)``
    gets the real draws and the padded list and returns one result per real draw.
    """
    out = []
    for start in range(0, len(draws), batch):
        chunk = draws[start:start + batch]
        out.extend(pose_batch(chunk, chunk + [chunk[-1]] * (batch - len(chunk))))
    return out
