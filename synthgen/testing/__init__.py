"""Helpers for tests and benchmarks (tiny seeded random-weight models); no run imports this package."""
