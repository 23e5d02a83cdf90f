"""Recipe schema of the ``sequence`` section: body-worn cameras on moving bodies (EgoSim views).

A recipe with ``sequence:`` makes motion sequences instead of single images: sample ``i`` is
frame ``i % sequence.frames`` of sequence ``i // sequence.frames``. Each frame holds every rig
camera's image and layers plus the IMU samples since the previous frame. Units: metres,
seconds, degrees, Hz; frames are the body-model's world frame (Z up, ground z = 0).

This module imports nothing from :mod:`synthgen.recipe`, so ``recipe.py`` can import it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "PROCEDURAL_MOTIONS",
    "SOCKETS",
    "DistortionConfig",
    "ImuConfig",
    "MotionBlurConfig",
    "MotionConfig",
    "MountConfig",
    "RigConfig",
    "SceneConfig",
    "SequenceConfig",
    "SpringConfig",
    "default_mounts",
]

Range = Annotated[tuple[float, float], Field(description="[low, high], inclusive")]
Vec3 = Annotated[tuple[float, float, float], Field(description="(x, y, z)")]

# Named body sockets a camera can ride on (mapped to each body model's bones in synthgen.sequences.rigs).
SOCKETS = ("head", "neck", "chest", "pelvis",
           "left_upper_arm", "right_upper_arm", "left_forearm", "right_forearm",
           "left_wrist", "right_wrist", "left_thigh", "right_thigh",
           "left_knee", "right_knee", "left_ankle", "right_ankle")
SocketName = Literal[SOCKETS]  # type: ignore[valid-type]

# Embedded procedural motions (synthgen.sequences.motion), built from the base-pose library.
PROCEDURAL_MOTIONS = ("walk", "turn", "wave", "squat", "reach", "sit_down")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_range(name: str, value: tuple[float, float], lo: float, hi: float) -> None:
    a, b = value
    if not (lo <= a <= b <= hi):
        raise ValueError(f"{name} must satisfy {lo} <= low <= high <= {hi}, got {list(value)}")


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


class SceneConfig(_Strict):
    """The world the cameras see: a ground plane and a procedural room or yard."""

    kinds: dict[Literal["none", "ground", "room", "yard"], float] = Field(
        default_factory=lambda: {"room": 1.0, "yard": 1.0},
        description="scene kind -> relative weight; none = body only, ground = a floor only, "
        "room = floor, walls, ceiling and furniture, yard = ground, fences, sky and blocks")
    room_size_m: Range = Field((6.0, 11.0), description="room side lengths range (enlarged to fit "
                               "the body's path), metres")
    room_height_m: Range = Field((2.5, 3.2), description="room height range, metres")
    objects: tuple[int, int] = Field((4, 9), description="[min, max] furniture/box count")
    clearance_m: float = Field(0.7, ge=0.0, le=5.0, description="keep objects this far from the "
                               "body's path, metres")
    tile_m: Range = Field((0.4, 1.0), description="floor tile size range, metres")

    @model_validator(mode="after")
    def _check(self) -> SceneConfig:
        if sum(self.kinds.values()) <= 0 or any(w < 0 for w in self.kinds.values()):
            raise ValueError("kinds: weights must be >= 0 and not all 0")
        if not 0 <= self.objects[0] <= self.objects[1] <= 64:
            raise ValueError(f"objects must satisfy 0 <= min <= max <= 64, got {list(self.objects)}")
        _check_range("room_size_m", self.room_size_m, 2.0, 100.0)
        _check_range("room_height_m", self.room_height_m, 2.0, 20.0)
        _check_range("tile_m", self.tile_m, 0.05, 10.0)
        return self


class MotionBlurConfig(_Strict):
    """Motion blur: the image is the mean of ``subframes`` renders over the shutter interval
    (centred on the frame time). Layers and labels are the frame time's."""

    subframes: int = Field(1, ge=1, le=16, description="renders per image; 1 = no blur")
    shutter: float = Field(0.5, gt=0.0, le=1.0, description="exposure, fraction of the frame interval")


class SequenceConfig(_Strict):
    """Sequences of frames seen by body-worn cameras (see the module docstring)."""

    frames: int = Field(64, ge=2, le=100000, description="frames per sequence")
    fps: int = Field(30, ge=1, le=240, description="frame rate, Hz")
    motion: MotionConfig = Field(default_factory=MotionConfig)
    rig: RigConfig = Field(default_factory=RigConfig)
    scene: SceneConfig = Field(default_factory=SceneConfig)
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
