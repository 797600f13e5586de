"""Where an ML stage runs: a local subprocess, a Kubernetes pod or a Vertex AI custom job.

Each mode runs the same `python -m tfpipe <stage> ...` command line with the same arguments.
"""
