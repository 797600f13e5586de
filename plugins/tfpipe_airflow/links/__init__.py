"""Operator extra links, and the artifact viewer they open for artifacts on local disk."""
