"""synthgen: synthetic training data for 3D pose and shape estimation."""

__version__ = "0.1.0"
