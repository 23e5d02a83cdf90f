"""Helpers shared by the tests and the benchmarks (tiny seeded random-weight models, a local Ray cluster); no run imports this package."""
