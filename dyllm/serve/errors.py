"""Errors as OpenAI clients expect them: a status and `{"error": {message, type, param, code}}`.

Every refusal the server makes is an `APIError`: bad requests (400), an unknown model or route
(404), a body over the limit (413), a full queue (429 with Retry-After), a missing or wrong API
key (401), a timeout (504). `error_response` renders one; `install_error_handlers` makes FastAPI's
own failures (malformed JSON, a field of the wrong type, an unknown route) take the same shape
with a 4xx status, and turns any other exception into a logged 500 whose body says only that the
server failed: tracebacks go to the log, never to the client.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger("dyllm.serve")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """A refusal with its HTTP status, OpenAI error fields and extra headers (Retry-After)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code=code, param=param)


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def error_bytes(error: APIError) -> bytes:
    """The JSON body of `error`, for middleware that answers before the app runs."""
    return json.dumps(error.body()).encode()


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through `APIError`'s shape."""

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type:
            return error_response(
                bad_request(
                    f"the body must be JSON sent with 'Content-Type: application/json' (got "
                    f"{content_type or 'no content type'})",
                    code="invalid_json",
                )
            )
        return error_response(validation_error(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        status = error.status_code
        if status == 404:
            message = (
                "no such endpoint; dyllm serves GET /v1/models, POST /v1/completions, POST "
                "/v1/chat/completions, GET /health and GET /metrics"
            )
            code = "not_found"
        else:
            message, code = str(error.detail), f"http_{status}"
        return error_response(APIError(status, message, code=code, headers=error.headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return error_response(
            APIError(500, "the server failed on this request; see its log", code="server_error")
        )


def validation_error(problems: list[Mapping[str, Any]]) -> APIError:
    """The first of pydantic's findings as one 400: malformed JSON, a missing or mistyped field."""
    if not problems:
        return bad_request("the request body is not valid")
    first = problems[0]
    kind = first.get("type", "")
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = location[0] if location else None
    where = ".".join(location)
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return bad_request(
            f"the request body is not valid JSON ({detail}); send a JSON object",
            code="invalid_json",
        )
    if kind == "missing":
        return bad_request(f"the request lacks the required field {field!r}", field, "missing")
    if kind == "model_attributes_type" or (kind.endswith("_type") and field is None):
        return bad_request("the request body must be a JSON object", None, "invalid_json")
    message = first.get("msg", "invalid value")
    return bad_request(f"{where}: {message} (got {_short(first.get('input'))})", field)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
