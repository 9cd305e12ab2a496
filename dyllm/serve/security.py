"""The server's guards in front of the app, API key and body size, and its closed defaults.

- `ApiKeyMiddleware`: with `--api-key` (or `DYLLM_API_KEY`), every request but `GET /health`
  (for load balancers' probes) needs `Authorization: Bearer KEY`; the key is compared with
  `hmac.compare_digest`, whose time does not depend on where the strings differ. A missing or
  wrong key is a 401 in OpenAI's error shape (the OpenAI client sends its `api_key` this way).

- `BodyLimitMiddleware`: a body over `--max-body-bytes` is refused with 413 before the app
  parses it, whether it announces its length (`Content-Length`) or streams in chunks; the body
  is read here (small by construction) and replayed to the app. (FastAPI's own `max_body_size`
  answers a too-long announced body with a plain-text 413 that no handler can reshape, and
  OpenAI clients expect the JSON error.)

The other defaults: the server binds 127.0.0.1 unless told otherwise (`dyllm serve --host`); no
endpoint reads a file or loads a model named in a request, and a policy parameter typed as a
path is refused in a request (`policy_spec.py`).
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dyllm.serve.errors import APIError, error_bytes

OPEN_PATHS = frozenset({"/health"})
"""Paths served without the API key."""

DEFAULT_BODY_LIMIT = 1 << 20
"""1 MiB: far more than any prompt a model's context holds."""


class ApiKeyMiddleware:
    """401 unless the request carries `Authorization: Bearer <key>` (constant-time compare)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("the API key is empty; give a non-empty key or none at all")
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers", ())).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            error = APIError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the "
                "key the server was started with (the OpenAI client's api_key)",
                code="invalid_api_key",
            )
            await send_error(send, error, {"www-authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for request bodies over `limit` bytes; smaller ones are replayed to the app."""

    def __init__(self, app: ASGIApp, limit: int = DEFAULT_BODY_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"the body limit must be at least 1 byte, got {limit}")
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await send_error(send, self._too_large(int(declared)))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left mid-body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await send_error(send, self._too_large(None))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: the disconnect, for handlers that watch it

        await self.app(scope, replay, send)

    def _too_large(self, size: int | None) -> APIError:
        told = f" ({size} bytes)" if size is not None else ""
        return APIError(
            413,
            f"the request body{told} is over the server's limit of {self.limit} bytes; send a "
            "shorter prompt, or start the server with a larger --max-body-bytes",
            code="body_too_large",
        )


async def send_error(send: Send, error: APIError, headers: dict[str, str] | None = None) -> None:
    """Answer with `error` directly from middleware (the app never sees the request)."""
    body = error_bytes(error)
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.encode(), v.encode()) for k, v in {**error.headers, **(headers or {})}.items()),
    ]
    await send({"type": "http.response.start", "status": error.status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})
