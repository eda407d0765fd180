"""The web page at ``/``: plain HTML, JavaScript and CSS from ``api/web/`` (nothing from a CDN,
so it works offline), served with a Content-Security-Policy that allows only this origin and,
for the dubbed media and the transcript, the object store the presigned links point at."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from polydub.settings import Settings

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


def object_store_origin(settings: Settings) -> str:
    """The scheme://host:port presigned links use (the public endpoint when one is set)."""
    endpoint = settings.s3_public_endpoint or settings.s3_endpoint
    if "://" in endpoint:
        return endpoint.rstrip("/")
    return f"{'https' if settings.s3_secure else 'http'}://{endpoint}"


def content_security_policy(settings: Settings) -> str:
    store = object_store_origin(settings)
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"media-src 'self' blob: {store}",  # blob: the local file, side by side
            f"connect-src 'self' {store}",  # the transcript JSON behind its presigned link
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _headers(settings: Settings) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",  # revalidate: a new release shows at once
    }


class _Assets(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_headers(scope["app"].state.settings))
        return response


def install(app: FastAPI) -> None:
    """``GET /`` serves the page, ``/ui/*`` its script and style sheet."""

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> FileResponse:
        settings: Settings = request.app.state.settings
        return FileResponse(
            WEB_DIR / "index.html",
            media_type="text/html; charset=utf-8",
            headers=_headers(settings),
        )

    app.mount("/ui", _Assets(directory=WEB_DIR), name="ui")
