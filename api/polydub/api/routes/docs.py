"""``/api/v1/docs``: Swagger UI served from the API itself.

FastAPI's default page loads Swagger UI's script and style sheet from a CDN, so it is blank
wherever the browser cannot reach one (an offline install, a locked-down cluster). The assets
come from the ``swagger-ui-bundle`` package instead and are mounted next to the page.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS_DIR = Path(str(swagger_ui_path))


def install(app: FastAPI, prefix: str) -> None:
    """The page at ``{prefix}/docs``, its assets under ``{prefix}/docs/assets/``."""
    docs = f"{prefix}/docs"
    assets = f"{docs}/assets"
    oauth2_redirect = f"{docs}/oauth2-redirect"

    @app.get(docs, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or f"{prefix}/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
            oauth2_redirect_url=oauth2_redirect,
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.mount(assets, StaticFiles(directory=ASSETS_DIR), name="swagger-ui")
