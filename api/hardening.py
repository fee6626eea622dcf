"""Security headers on every response, and CORS for the origins the settings allow."""

from __future__ import annotations

from flask import Flask, Response
from flask_cors import CORS

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def register_hardening(app: Flask, cors_origins: list[str]) -> None:
    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)  # a page with its own policy keeps it (/docs)
        response.headers.setdefault("Cache-Control", "no-store")  # answers hold private data
        return response

    if cors_origins:
        CORS(
            app,
            resources={r"/api/*": {"origins": cors_origins}},
            methods=["POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After", "Server-Timing"],
            max_age=600,
        )
