"""Simulated IMUs against closed forms: a circle at constant speed, free fall, noise statistics."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from synthgen.sequences.imu import imu_readings
from synthgen.sequences.rigs import sim_rate
from synthgen.recipe import ImuConfig
from tests.fixtures.mounts import G, IMU, interior, one_mount


def test_imu_on_a_circle_at_constant_speed_matches_the_closed_form():
    # camera facing along the tangent of a horizontal circle (radius r, rate w), 30 fps frames
    r, w, fps = 1.3, 1.5, 30
    t = np.arange(121) / fps
    pos = np.stack([r * np.cos(w * t), r * np.sin(w * t), np.full_like(t, 1.2)], 1)
    R0 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # cam x, y, z -> world columns
    rot = Rotation.from_rotvec(np.outer(w * t, [0, 0, 1])).as_matrix() @ R0
    track = one_mount(t, pos, rot, rate=sim_rate(fps, IMU.rate_hz, 1000))
    imu = imu_readings(track, 0, IMU, rng=None)
    inside = interior(imu["t"])
    expected_accel = np.array([-r * w * w, -G, 0.0])  # centripetal (to the camera's left) + gravity up
    expected_gyro = np.array([0.0, -w, 0.0])          # yaw about world up = -y of the camera
    assert np.abs(imu["accel"][inside] - expected_accel).max() < 2e-3    # m/s^2
    assert np.abs(imu["gyro"][inside] - expected_gyro).max() < 2e-4     # rad/s
    assert np.abs(imu["accel"] - expected_accel).max() < 3e-2            # the ends too
    # the rendered poses are the frame poses exactly (rigid mount)
    steps = np.arange(len(t)) * (track.rate // fps)
    assert np.allclose(track.position[steps, 0], pos, atol=1e-12)
    assert np.allclose(track.rotation[steps, 0], rot, atol=1e-12)


def test_imu_in_free_fall_reads_zero_force_and_constant_spin():
    fps = 30
    t = np.arange(40) / fps
    p0, v0 = np.array([0.2, -0.1, 5.0]), np.array([0.4, 0.1, 1.0])
    pos = p0 + np.outer(t, v0) - 0.5 * G * np.outer(t * t, [0, 0, 1])
    spin = np.array([0.3, -1.1, 2.0])  # world-frame angular velocity, rad/s
    R0 = Rotation.from_euler("xyz", [0.3, -0.4, 1.0]).as_matrix()
    rot = Rotation.from_rotvec(np.outer(t, spin)).as_matrix() @ R0
    imu = imu_readings(one_mount(t, pos, rot), 0, IMU, rng=None)
    assert np.abs(imu["accel"]).max() < 1e-9          # a cubic spline is exact on a parabola
    assert np.abs(imu["gyro"] - R0.T @ spin).max() < 1e-7  # constant in the body frame
    # at rest the accelerometer reads gravity upward, in the sensor frame
    still = imu_readings(one_mount(t, np.tile(p0, (len(t), 1)), np.tile(R0, (len(t), 1, 1))), 0, IMU, rng=None)
    assert np.allclose(still["accel"], R0.T @ [0, 0, G], atol=1e-12)
    assert np.allclose(still["gyro"], 0.0, atol=1e-12)


def test_imu_noise_statistics():
    t = np.arange(301) / 30
    pos, rot = np.zeros((len(t), 3)), np.tile(np.eye(3), (len(t), 1, 1))
    config = ImuConfig(rate_hz=200, accel_bias_sd=0.0, accel_bias_walk=0.0, gyro_bias_sd=0.1,
                       gyro_bias_walk=0.0, accel_noise_density=0.01, gyro_noise_density=0.0)
    imu = imu_readings(one_mount(t, pos, rot), 0, config, np.random.default_rng(0))
    noise = imu["accel"] - imu["accel_true"]
    assert abs(noise.std() - 0.01 * np.sqrt(200)) < 0.01 * np.sqrt(200) * 0.05
    gyro_err = imu["gyro"] - imu["gyro_true"]
    assert np.allclose(gyro_err, gyro_err[0])  # a constant bias only
    assert np.allclose(imu["gyro_bias"], gyro_err)
