import numpy as np

from synthgen.points import bounds


def test_bounds_are_numpys_per_coordinate_min_and_max_in_the_points_dtype():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        points = rng.normal(size=(14_000, 3)).astype(dtype)
        lo, hi = bounds(points)
        assert lo.dtype == hi.dtype == dtype and lo.shape == hi.shape == (3,)
        np.testing.assert_array_equal(lo, points.min(axis=0))
        np.testing.assert_array_equal(hi, points.max(axis=0))


def test_bounds_of_a_strided_view_and_of_two_dimensional_points():
    points = np.arange(30, dtype=np.float32).reshape(10, 3)[::-2]  # rows 9, 7, ..., 1
    lo, hi = bounds(points)
    np.testing.assert_array_equal(lo, [3, 4, 5])
    np.testing.assert_array_equal(hi, [27, 28, 29])
    lo, hi = bounds(points[:, :2])
    np.testing.assert_array_equal(lo, [3, 4])
    np.testing.assert_array_equal(hi, [27, 28])
