"""The chat page: `/` and its files under `/web/`, straight from the repository's `web/` folder.

The page is a client of the API like any other (it calls the same routes with the same
key), so it needs no route of its own beyond its files. Its files are read once, kept
in memory with a gzip copy (the first load stays small without a build step), and
revalidated by ETag. It has no inline script or style, so its Content-Security-Policy
allows scripts, styles and requests from this origin only.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from flask import Response, abort, request
from flask_openapi3 import APIBlueprint
from pydantic import BaseModel
from werkzeug.security import safe_join

from api.openapi import OPERATIONS, errors
from config import PROJECT_ROOT

WEB_ROOT = PROJECT_ROOT / "web"
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
COMPRESSIBLE = ("text/", "application/javascript", "application/json", "image/svg+xml")

bp = APIBlueprint("web", __name__, abp_tags=[OPERATIONS])


class WebFile(BaseModel):
    name: str


def _file(media_type: str) -> dict[int, dict[str, object]]:
    return {200: {"content": {media_type: {"schema": {"type": "string"}}}}, 304: {"description": "Not modified"}}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    mimetype: str
    etag: str


@cache
def load_asset(name: str) -> Asset | None:
    """The file `web/<name>` (None when there is none); read once per process."""
    found = safe_join(str(WEB_ROOT), name)
    if found is None or not Path(found).is_file():
        return None
    body = Path(found).read_bytes()
    mimetype = mimetypes.guess_type(found)[0] or "application/octet-stream"
    if mimetype == "text/javascript":
        mimetype = "application/javascript"
    gzipped = gzip.compress(body, 9, mtime=0) if mimetype.startswith(COMPRESSIBLE) else None
    return Asset(body, gzipped, mimetype, hashlib.sha256(body).hexdigest()[:32])


def asset_response(name: str) -> Response:
    asset = load_asset(name)
    if asset is None:
        abort(404)
    send_gzip = asset.gzipped is not None and "gzip" in request.accept_encodings
    response = Response(asset.gzipped if send_gzip else asset.body, mimetype=asset.mimetype)
    if send_gzip:
        response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"
    response.headers["Cache-Control"] = "no-cache"  # revalidate: a new version shows at once
    response.set_etag(asset.etag + ("-gz" if send_gzip else ""))
    return response.make_conditional(request)


@bp.get("/", responses=_file("text/html"))
def page() -> Response:
    """The chat page (WEB_UI)"""
    return asset_response("index.html")


@bp.get("/web/<path:name>", responses={**_file("application/octet-stream"), **errors(404)})
def web_file(path: WebFile) -> Response:
    """The chat page's files (scripts, styles, vendored libraries)"""
    return asset_response(path.name)


@bp.after_request
def page_policy(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response
