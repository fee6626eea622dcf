"""`/openapi.json`, and the docs page `/docs`: Swagger UI whose files come inside the
flask-swagger-ui wheel and are served by this app, so the page works with no internet.

The page has no inline script, so its Content-Security-Policy can allow scripts from
this origin only.
"""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, current_app, jsonify

from api.openapi import build_spec

SWAGGER_UI = Path(flask_swagger_ui.__file__).resolve().parent / "dist"
ASSETS = "/docs/assets"
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)
PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>gpt-api: API docs</title>
  <link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
  <link rel="stylesheet" href="{ASSETS}/index.css">
  <link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS}/swagger-ui-bundle.js"></script>
  <script src="{ASSETS}/swagger-ui-standalone-preset.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""
INIT = """window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout"
  });
};
"""

bp = Blueprint("docs", __name__, static_folder=SWAGGER_UI, static_url_path=ASSETS)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    spec = current_app.extensions.get("openapi")
    if spec is None:
        spec = current_app.extensions["openapi"] = build_spec(current_app)
    return jsonify(spec)


@bp.get("/docs")
def page() -> Response:
    return Response(PAGE, mimetype="text/html")


@bp.get("/docs/init.js")
def init_script() -> Response:
    return Response(INIT, mimetype="text/javascript")


@bp.after_request
def page_policy(response: Response) -> Response:
    """The page may load its own scripts, styles, images and the spec (others get `'none'`)."""
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response
