"""Cross-origin requests: closed unless ``XAI_CORS_ORIGINS`` lists the origins a browser page may call
the API from.

CORS itself is Starlette's ``CORSMiddleware`` (preflights, the ``Access-Control-*`` headers). CORS only
tells a browser whether a page may *read* an answer; a "simple" cross-origin POST (a form, multipart,
no custom header) is sent without a preflight and would run a job on behalf of whoever visits a
hostile page. So a state-changing request (POST, PUT, PATCH, DELETE) that carries an ``Origin`` other
than the API's own and not listed is refused with 403 ``origin_not_allowed`` before it is read. Clients
that are not browsers send no ``Origin`` and are not affected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.datastructures import Headers

from app.errors import error_response
from core.errors import ErrorCode

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class OriginCheck:
    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {origin.rstrip("/") for origin in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in STATE_CHANGING:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self._allowed(origin, scope, headers):
                message = f"requests from the origin {origin!r} are not allowed (XAI_CORS_ORIGINS lists those that are)"
                await error_response(ErrorCode.origin_not_allowed, message, "Origin")(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, scope: Scope, headers: Headers) -> bool:
        """Listed, or the API's own; never ``null`` (sandboxed frames, file:// pages)."""
        origin = origin.rstrip("/")
        if origin == "null":
            return False
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
        return origin in self.allowed or "*" in self.allowed or origin == own
