"""Data arrival: the landing area of monthly spans, and generated taxi-shaped data for benchmarks."""
