"""The tiny random-weight SAM the tests build: kept in :mod:`synthgen.testing.tiny_models` (shared with
the benchmarks), imported here under its old name."""

from synthgen.testing.tiny_models import IMAGE_SIZE, build_tiny_sam  # noqa: F401

__all__ = ["IMAGE_SIZE", "build_tiny_sam"]
