"""GET /: the web page to try the service (``app/web/``: plain HTML, CSS and JavaScript, no CDN, no build
step). The page itself needs no key; every request it makes goes through the public API with the key the
user types in."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

WEB = Path(__file__).resolve().parent.parent / "web"
router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    return FileResponse(WEB / "index.html", media_type="text/html")
