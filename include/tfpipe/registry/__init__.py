"""Model registry and lineage: every training run recorded in MLflow, blessed models registered as versions.

The tracking URI alone decides where the registry lives: a SQLite file on a laptop, an MLflow server
(on Postgres) in production. The aliases `challenger` and `champion` name the newest blessed version
and the version that serves; the evaluation gate compares every candidate with the champion.
"""
