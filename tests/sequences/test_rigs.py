"""Rig mounts and lenses against closed forms (no body, no rendering); the IMU
readings of spring mounts check the mount."""

from __future__ import annotations

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from synthgen.sequences.imu import imu_readings
from synthgen.sequences.rigs import Lens, build_lens, mount_offset, project_fisheye, unproject_fisheye
from synthgen.recipe import DistortionConfig, ImuConfig, MountConfig, SpringConfig
from tests.fixtures.mounts import G, one_mount



def test_spring_mount_in_free_fall_follows_the_damped_step_response():
    # the socket drops from rest; the camera hangs on a spring: e'' + c e' + k e = g
    k, c, fps = 400.0, 12.0, 30
    spring = SpringConfig(stiffness=k, damping=c, angular_stiffness=k, angular_damping=c)
    t = np.arange(61) / fps
    pos = np.stack([np.zeros_like(t), np.zeros_like(t), 10.0 - 0.5 * G * t * t], 1)
    rot = np.tile(np.eye(3), (len(t), 1, 1))
    track = one_mount(t, pos, rot, spring, rate=12000)
    imu = imu_readings(track, 0, ImuConfig(rate_hz=200), rng=None)
    sigma, wd = c / 2.0, np.sqrt(k - (c / 2.0) ** 2)
    tt = imu["t"]
    expected = G * np.exp(-sigma * tt) * (np.cos(wd * tt) - sigma / wd * np.sin(wd * tt))
    assert np.abs(imu["accel"][:, 2] - expected).max() < 0.02 * G  # semi-implicit Euler, O(h)
    assert np.abs(imu["accel"][:, :2]).max() < 1e-9
    lag = track.position[:, 0, 2] - pos[-1, 2]
    assert abs(lag[-1] - G / k) < 1e-3  # settles g/k above the falling socket
    # with the spring off, the same mount falls with its socket and reads nothing
    rigid = imu_readings(one_mount(t, pos, rot), 0, ImuConfig(rate_hz=200), rng=None)
    assert np.abs(rigid["accel"]).max() < 1e-9


def test_spring_mount_lags_a_turning_socket_and_settles():
    fps = 30
    t = np.arange(91) / fps
    x = np.clip((t - 1.0) / 0.5, 0.0, 1.0)
    yaw = x * x * (3 - 2 * x)  # turn 1 rad between t = 1.0 and 1.5 s
    rot = Rotation.from_euler("z", yaw[:, None]).as_matrix()
    pos = np.zeros((len(t), 3))
    spring = SpringConfig(angular_stiffness=600.0, angular_damping=20.0)
    track = one_mount(t, pos, rot, spring, rate=3000)
    steps = np.arange(len(t)) * (track.rate // fps)
    got = Rotation.from_matrix(track.rotation[steps, 0]).as_euler("xyz")[:, 2]
    assert np.abs(got[t < 0.9]).max() < 2e-3                 # ~at rest until the socket moves
    speeding_up = (t > 1.03) & (t < 1.25)
    assert np.all(got[speeding_up] < yaw[speeding_up])      # lags behind while the turn speeds up
    assert got.max() > 1.0 + 5e-3                            # overshoots: it wobbles (damping ratio 0.41)
    assert abs(got[-1] - yaw[-1]) < 1e-3                     # and settles on the socket


def test_fisheye_model_matches_opencv_and_inverts():
    K = np.array([[180.0, 0.0, 127.5], [0.0, 180.0, 127.5], [0.0, 0.0, 1.0]])
    k = np.array([0.05, -0.01, 0.003, -0.0005])
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(200, 3))
    pts[:, 2] = np.abs(pts[:, 2]) + 0.05
    ours = project_fisheye(pts, K, k)
    theirs, _ = cv2.fisheye.projectPoints(pts[:, None].astype(np.float64), np.zeros(3), np.zeros(3), K, k)
    assert np.abs(ours - theirs[:, 0]).max() < 1e-6
    rays, _ = unproject_fisheye(ours, K, k)
    unit = pts / np.linalg.norm(pts, axis=1, keepdims=True)
    assert np.abs(rays - unit).max() < 1e-9


def test_fisheye_remap_lens_sees_the_same_rays():
    mount = MountConfig(name="cam", socket="head", fov_deg=140.0,
                        distortion=DistortionConfig(model="fisheye", k=(0.02, 0.0, 0.0, 0.0)))
    lens: Lens = build_lens(mount, 96, 96)
    assert lens.remaps and lens.valid[48, 48] and not lens.valid[0, 0]
    # a fisheye pixel's ray lands, in the pinhole render, where the map points
    rays, _ = unproject_fisheye(np.array([[10.0, 40.0], [70.0, 20.0]]), lens.K, lens.k)
    pin = (rays / rays[:, 2:]) @ lens.render_K.T
    assert np.allclose(pin[:, 0], lens.map_x[[40, 20], [10, 70]], atol=1e-3)
    assert np.allclose(pin[:, 1], lens.map_y[[40, 20], [10, 70]], atol=1e-3)


def test_mount_offset_axes():
    forward = mount_offset((0, 0, 0.1), (0, 0, 0))
    assert np.allclose(forward[:3, 2], [0, 0, 1]) and np.allclose(forward[:3, 0], [-1, 0, 0])
    assert np.allclose(forward[:3, 3], [0, 0, 0.1])
    assert np.allclose(mount_offset((0, 0, 0), (90, 0, 0))[:3, 2], [1, 0, 0])  # yaw toward the left
    assert np.allclose(mount_offset((0, 0, 0), (0, 90, 0))[:3, 2], [0, 1, 0])  # pitch up
    rolled = mount_offset((0, 0, 0), (0, 0, 90))
    assert np.allclose(rolled[:3, 2], [0, 0, 1]) and np.allclose(rolled[:3, 0], [0, -1, 0])
