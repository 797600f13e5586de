"""Where artifacts live, and how they are written so that a rerun overwrites instead of duplicating.

Layout: <root>/<pipeline>/span=<span>/run=<run>/<stage output>. The path is a pure function of the
pipeline, the data span and the Airflow run id (never of the clock or the try number), so a cleared
task that runs again writes to the same place. Outputs are staged next to their destination and
swapped in whole: a rerun leaves exactly one copy, and a crash mid-write leaves the old one intact.

Local paths are handled with the standard library; other URIs (gs://) go through TensorFlow's
gfile, which only the ML runtime has, imported when first needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(part.strip("/") for part in parts)])


def run_key(run_id: str) -> str:
    """A path-safe form of an Airflow run id, stable for the same run id."""
    key = _UNSAFE.sub("_", run_id).strip("._")
    if not key:
        raise ValueError(f"run id {run_id!r} has no usable characters")
    return key


@dataclass(frozen=True)
class ArtifactLayout:
    root: str
    pipeline: str

    def span_uri(self, span: str) -> str:
        return join(self.root, self.pipeline, f"span={span}")

    def run_uri(self, span: str, run_id: str) -> str:
        return join(self.span_uri(span), f"run={run_key(run_id)}")

    def output_uri(self, span: str, run_id: str, output: str) -> str:
        return join(self.run_uri(span, run_id), output)


def _gfile():  # pragma: no cover - exercised only where TensorFlow and a remote store exist
    import tensorflow as tf

    return tf.io.gfile


def exists(uri: str) -> bool:
    return _gfile().exists(uri) if is_remote(uri) else local_path(uri).exists()


def is_dir(uri: str) -> bool:
    return _gfile().isdir(uri) if is_remote(uri) else local_path(uri).is_dir()


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Files directly inside a folder, sorted by name, hidden files skipped."""
    if is_remote(uri):
        names = [name.rstrip("/") for name in _gfile().listdir(uri)]
        return sorted(
            join(uri, name)
            for name in names
            if not name.startswith(".") and name.endswith(suffix) and not _gfile().isdir(join(uri, name))
        )
    folder = local_path(uri)
    return sorted(
        str(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.endswith(suffix)
    )


def csv_files(uri: str, argument: str) -> list[str]:
    """The CSV files a data argument names: the file itself, or the .csv files of a folder."""
    from tfpipe.errors import DataError

    if not exists(uri):
        raise DataError(f"{uri}: no such file or folder ({argument})")
    files = list_files(uri, ".csv") if is_dir(uri) else [uri]
    if not files:
        raise DataError(f"{uri}: folder has no .csv files ({argument})")
    return files


@contextlib.contextmanager
def open_binary(uri: str, mode: str = "rb") -> Iterator[Any]:
    if is_remote(uri):
        with _gfile().GFile(uri, mode) as handle:
            yield handle
    else:
        with open(local_path(uri), mode) as handle:
            yield handle


def read_json(uri: str) -> Any:
    with open_binary(uri) as handle:
        return json.loads(handle.read())


def write_json(uri: str, value: Any) -> None:
    """Write JSON whole or not at all: readers never see half a file."""
    data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
    if is_remote(uri):
        with _gfile().GFile(uri, "wb") as handle:
            handle.write(data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(data)
    os.chmod(handle.name, 0o666 & ~_umask())  # temp files are private; published ones are not
    os.replace(handle.name, path)


def sha256_of(uri: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open_binary(uri) as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_output(uri: str) -> Iterator[Path]:
    """Yield a local folder to write an output into; on success it replaces `uri` whole.

    On failure nothing at `uri` changes and the staging folder is removed.
    """
    if is_remote(uri):
        staging = Path(tempfile.mkdtemp(prefix="tfpipe-stage-"))
        try:
            yield staging
            gfile = _gfile()
            if gfile.exists(uri):
                gfile.rmtree(uri)
            for path in sorted(staging.rglob("*")):
                if path.is_file():
                    target = join(uri, str(path.relative_to(staging)))
                    gfile.makedirs(target.rsplit("/", 1)[0])
                    gfile.copy(str(path), target, overwrite=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return

    final = local_path(uri)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = None
    if final.exists():
        retired = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.retired-"))
        os.rename(final, retired / "old")
    os.rename(staging, final)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)
