"""Helpers for tests and benchmarks (tiny seeded random-weight models, a local Ray cluster); no run
imports this package."""
