"""The artifact viewer: files under the local artifact root, served by the Airflow API server.

The plugin mounts `app` at /tfpipe (Airflow 3 mounts a plugin's `fastapi_apps` into the API server's
FastAPI app), so `/tfpipe/artifacts/<path>` is a file or folder under the artifact root: a file with
its content type, a folder as a listing. The "Report" extra link points here for local artifacts.

Root: `TFPIPE_ARTIFACT_ROOT`, else `artifacts.root` of the pipeline configs in the DAGs folder (see
tfpipe_airflow.links.artifacts.artifact_root), read at the first request. A gs:// root serves nothing:
those artifacts open in the Cloud console.

Authentication and authorization are the API server's own: the request must carry the Airflow session
cookie (as the UI's requests do, so a click in the UI just works) or an `Authorization: Bearer <JWT>`
header, checked by Airflow's `get_user` dependency against the configured auth manager (the simple
auth manager's all-admins mode included, whose middleware authenticates every request). The user must
then be allowed to read task outputs (XCom) of all DAGs: the artifact root holds every pipeline's
outputs and paths do not name a DAG. Without an auth manager (this app run outside the API server)
every request fails: there is no unauthenticated mode.

Paths are confined to the root: `.` and `..` segments, absolute paths and symlinks leading outside get 404. Files are
sent with a sandboxing Content-Security-Policy, so an HTML artifact's scripts run in an opaque origin
and cannot act with the viewer's Airflow session (its relative links still open, with the session).
"""

from __future__ import annotations

import html
import os
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tfpipe_airflow.links.artifacts import ARTIFACTS_ROUTE, PATH_SAFE, local_artifact_root

CONTENT_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".json": "application/json",
    ".css": "text/css",
    ".js": "text/javascript",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".csv": "text/csv",
    ".pbtxt": "text/plain",
    ".txt": "text/plain",
    ".log": "text/plain",
    ".md": "text/plain",
    ".yaml": "text/plain",
    ".yml": "text/plain",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# Artifacts are pipeline outputs, not Airflow's own pages: scripts in them (a CDN-loaded statistics
# viewer, say) may run, but in an opaque origin, with no access to the session or same-origin APIs.
FILE_CSP = "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox"
LISTING_CSP = "default-src 'none'; style-src 'unsafe-inline'"
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache", "Referrer-Policy": "same-origin"}

_NOT_FOUND = "no such artifact"
_bearer = HTTPBearer(auto_error=False)


async def authorized_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Any:
    """The Airflow user of the request, if allowed to read task outputs; 401/403 otherwise.

    Airflow's `get_user` (the core API's authentication: bearer token, else the UI's session cookie)
    is called here rather than declared with Depends, to import the API server's modules only in the
    API server: every task process loads plugins too, and needs none of them.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request=request, _oauth_token=None, bearer_credentials=credentials)
    # No DAG details: allowed only for users who may read the XComs of every DAG (Airflow's
    # requires_access_dag would take a dag_id from the query string, which the caller chooses).
    allowed = await run_in_threadpool(
        get_auth_manager().is_authorized_dag, method="GET", access_entity=DagAccessEntity.XCOM, user=user
    )
    if not allowed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "not allowed to read task outputs")
    return user


def resolve_artifact(root: Path, relative: str) -> Path:
    """The file or folder at `relative` under `root`, symlinks resolved; 404 unless it is inside `root`."""
    if "\x00" in relative or "\\" in relative or relative.startswith("/"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, _NOT_FOUND)
    parts = [part for part in relative.split("/") if part]
    if "." in parts or ".." in parts:
        raise HTTPException(status.HTTP_404_NOT_FOUND, _NOT_FOUND)
    try:
        base = root.resolve(strict=True)
        target = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        raise HTTPException(status.HTTP_404_NOT_FOUND, _NOT_FOUND) from None
    if not target.is_relative_to(base) or not (target.is_file() or target.is_dir()):
        raise HTTPException(status.HTTP_404_NOT_FOUND, _NOT_FOUND)
    return target


def content_type(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), DEFAULT_CONTENT_TYPE)


def listing_page(root: Path, folder: Path, relative: str) -> str:
    """An HTML index of `folder`: subfolders first, then files; entries leading outside `root` left out."""
    base = root.resolve()
    entries = []
    for entry in folder.iterdir():
        try:
            resolved = entry.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if resolved.is_relative_to(base):
            entries.append((not resolved.is_dir(), entry.name, resolved.is_dir()))
    title = html.escape("/" + relative.strip("/"))
    items = [] if folder.resolve() == base else ['<li><a href="../">../</a></li>']
    for _, name, is_dir in sorted(entries):
        suffix = "/" if is_dir else ""
        href = html.escape("./" + quote(name, safe=PATH_SAFE) + suffix, quote=True)
        items.append(f'<li><a href="{href}">{html.escape(name)}{suffix}</a></li>')
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Artifacts {title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}li{margin:.2em 0}</style></head>\n"
        f"<body><h1>Artifacts {title}</h1>\n<ul>\n" + "\n".join(items) + "\n</ul></body></html>\n"
    )


def create_app(root: str | os.PathLike[str] | None = None) -> FastAPI:
    """The viewer app. `root`: the folder to serve; None reads the configured root at the first request."""
    app = FastAPI(
        title="tfpipe artifact viewer",
        description="Files under the tfpipe artifact root (reports, statistics, schemas), for Airflow users.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Every route, present and future, requires an authorized Airflow user.
        dependencies=[Depends(authorized_user)],
    )
    app.state.root = Path(os.path.abspath(root)) if root is not None else None

    def current_root() -> Path:
        if app.state.root is None:
            app.state.root = local_artifact_root()
        if app.state.root is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, "no local artifact root: artifacts in gs:// open in the Cloud console"
            )
        return app.state.root

    @app.get(ARTIFACTS_ROUTE, include_in_schema=False)
    def artifacts_index() -> Response:
        return RedirectResponse(ARTIFACTS_ROUTE.rsplit("/", 1)[-1] + "/", status.HTTP_307_TEMPORARY_REDIRECT)

    @app.get(ARTIFACTS_ROUTE + "/{relative:path}")
    def artifact(relative: str) -> Response:
        """A file under the artifact root, or a listing of a folder (whose URL ends with a slash)."""
        root = current_root()
        target = resolve_artifact(root, relative)
        if target.is_dir():
            if relative and not relative.endswith("/"):
                # Relative links of the listing need the slash; a relative Location keeps the mount prefix.
                return RedirectResponse(
                    quote(PurePosixPath(relative).name, safe=PATH_SAFE) + "/", status.HTTP_307_TEMPORARY_REDIRECT
                )
            headers = {**COMMON_HEADERS, "Content-Security-Policy": LISTING_CSP}
            return HTMLResponse(listing_page(root, target, relative), headers=headers)
        headers = {**COMMON_HEADERS, "Content-Security-Policy": FILE_CSP}
        return FileResponse(target, media_type=content_type(target), headers=headers)

    return app


app = create_app()
