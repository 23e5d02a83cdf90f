"""Simulated IMUs: what an accelerometer and a gyroscope riding on a mount would report.

Sensor frame = the mount's camera frame (OpenCV: x right, y down, z forward). World: Z up,
gravity ``g = (0, 0, -gravity)``.

- accelerometer: specific force ``f = R^T (a - g)`` (m/s^2): a sensor at rest reads +gravity
  along its world-up axis, a free-falling one reads 0;
- gyroscope: angular velocity in the sensor frame ``R^T w`` (rad/s), ``w`` the world-frame rate.

``R`` (camera-to-world), ``a`` and ``w`` come from :class:`synthgen.sequences.rigs.MountTrack` (exact
derivatives of the C2 path for rigid mounts; the integrated spring state for sprung ones).

Noise (per sequence and mount, from one generator): a constant turn-on bias ~ N(0, bias_sd)
per axis, plus a bias random walk (``walk * sqrt(dt)`` per step) and white noise of sd
``noise_density * sqrt(rate_hz)``. Both the noisy and the true readings are returned.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthgen.recipe import ImuConfig

__all__ = ["angular_rate", "imu_readings", "specific_force"]


def specific_force(acceleration: np.ndarray, rotation: np.ndarray, gravity: float) -> np.ndarray:
    """(N, 3) world accelerations and (N, 3, 3) sensor-to-world rotations -> (N, 3) specific force
    in the sensor frame, m/s^2."""
    return np.einsum("nji,nj->ni", rotation, acceleration + np.array([0.0, 0.0, gravity]))


def angular_rate(omega_world: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """(N, 3) world-frame angular velocities -> (N, 3) sensor-frame rates, rad/s."""
    return np.einsum("nji,nj->ni", rotation, omega_world)


def _noise(rng: np.random.Generator, n: int, rate: float, bias_sd: float, walk: float,
           density: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) additive noise (bias + walk + white) and the (n, 3) bias it contains."""
    bias0 = rng.normal(0.0, bias_sd, 3) if bias_sd > 0 else np.zeros(3)
    steps = rng.normal(0.0, walk * np.sqrt(1.0 / rate), (n, 3)) if walk > 0 else np.zeros((n, 3))
    bias = bias0 + np.cumsum(steps, axis=0) - steps[0]
    white = rng.normal(0.0, density * np.sqrt(rate), (n, 3)) if density > 0 else np.zeros((n, 3))
    return bias + white, bias


def imu_readings(track, mount: int, config: ImuConfig, rng: np.random.Generator | None) -> dict[str, Any]:
    """IMU samples of ``mount`` at ``config.rate_hz`` over the whole track.

    track: a :class:`synthgen.sequences.rigs.MountTrack` whose rate is a multiple of ``config.rate_hz``.
    Returns float64 arrays: ``t`` (N,) seconds, ``accel``/``gyro`` (N, 3) noisy,
    ``accel_true``/``gyro_true`` (N, 3), ``accel_bias``/``gyro_bias`` (N, 3). ``rng`` None = no noise.
    """
    if track.rate % config.rate_hz:
        raise ValueError(f"integration rate {track.rate} Hz is not a multiple of imu.rate_hz={config.rate_hz}")
    stride = track.rate // config.rate_hz
    steps = np.arange(0, len(track.t), stride)
    R = track.rotation[steps, mount]
    accel = specific_force(track.acceleration[steps, mount], R, config.gravity)
    gyro = angular_rate(track.omega[steps, mount], R)
    out = {"t": track.t[steps], "accel_true": accel, "gyro_true": gyro}
    if rng is None:
        zero = np.zeros_like(accel)
        return out | {"accel": accel, "gyro": gyro, "accel_bias": zero, "gyro_bias": zero}
    a_noise, a_bias = _noise(rng, len(steps), config.rate_hz, config.accel_bias_sd, config.accel_bias_walk,
                             config.accel_noise_density)
    g_noise, g_bias = _noise(rng, len(steps), config.rate_hz, config.gyro_bias_sd, config.gyro_bias_walk,
                             config.gyro_noise_density)
    return out | {"accel": accel + a_noise, "gyro": gyro + g_noise, "accel_bias": a_bias, "gyro_bias": g_bias}
