"""The body-worn camera factory's scenes: :mod:`synthgen.scene`, shared with single images."""

from synthgen.scene import BODY_INSTANCE, NEAR_CLIP, SCENE_PART_NAMES, SceneMesh, build_scene, clip_near

__all__ = ["BODY_INSTANCE", "NEAR_CLIP", "SCENE_PART_NAMES", "SceneMesh", "build_scene", "clip_near"]
