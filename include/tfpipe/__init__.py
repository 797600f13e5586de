"""tfpipe: the ML library behind the tfpipe Airflow DAG bundle.

Importable and testable without Airflow. Heavy libraries (TensorFlow, TFDV, TFMA, Beam, Great
Expectations) are imported inside the stages that need them, never at package import.
"""

__version__ = "0.1.0"


def code_version() -> str:
    """The version of this code, for lineage: $TFPIPE_CODE_VERSION (set when an image is built), else the
    git commit of the checkout (with "-dirty" when it has uncommitted changes), else the package version."""
    import os
    import subprocess
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    if os.environ.get("TFPIPE_CODE_VERSION"):
        return os.environ["TFPIPE_CODE_VERSION"]
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if described.returncode == 0 and described.stdout.strip():
            return f"git:{described.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"tfpipe=={version('tfpipe')}"
    except PackageNotFoundError:
        return "unknown"
