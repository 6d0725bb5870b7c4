"""The ASGI app of `ddim serve`: one page, and a JSON API over one model held in memory.

Routes: GET / (the page), GET /api/model, GET /api/status, POST /api/sample (a PNG grid),
POST /api/sample/stream (server-sent events: x̂_0 and x_t previews, then the images),
POST /api/interpolate, POST /api/invert (the body is an image file). GET /openapi.json
describes the API. No route takes a path or a model name: the server reads only its own
package files, fixed at start.
"""

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ddim import __version__, samplers
from ddim.guidance import MAX_GUIDANCE
from ddim.models import Model
from ddim.schedule import SPACINGS, Spacing
from ddim.serve.images import BadImage, data_url, decode_upload, favicon
from ddim.serve.jobs import Handle, JobQueue, QueueFull
from ddim.serve.limits import Limits
from ddim.serve.schemas import MAX_SEED, request_models
from ddim.serve.work import Result, run_interpolation, run_inversion, run_sample

log = logging.getLogger("ddim.serve")
ASSETS = {"/": "index.html", "/app.js": "app.js", "/style.css": "style.css"}
_MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css"}
_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'"
_CLIENT_GONE = 499  # nginx's "client closed request": never seen by anyone, but logged

_PNG = {"content": {"image/png": {}}, "description": "the images as one PNG grid"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "the upload or JSON body is larger than the server accepts"},
    429: {"description": "the job queue is full; see Retry-After"},
}
_SSE = {"content": {"text/event-stream": {}}, "description": "server-sent events"}
_UPLOAD = {
    "required": True,
    "content": {"application/octet-stream": {"schema": {"type": "string", "minLength": 1}}},
}


def create_app(model: Model, limits: Limits | None = None, name: str = "model") -> FastAPI:
    """The app serving `model`; `name` is shown on the page (only its last path component)."""
    limits = Limits() if limits is None else limits

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:  # a queue per run: it can start again
        app.state.jobs = JobQueue(limits.max_queue)
        yield
        app.state.jobs.shutdown()

    app = FastAPI(
        title="ddim serve", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
        description="Sample, watch, interpolate and invert a DDIM model (Song, Meng & Ermon 2021).",
    )  # fmt: skip
    app.add_exception_handler(RequestValidationError, _unprocessable)
    app.add_exception_handler(StarletteHTTPException, _not_json)
    app.add_middleware(_JSONBodyLimit, limit=limits.max_json_bytes)
    requests = request_models(model, limits)
    _add_assets(app)
    _add_info_routes(app, _model_info(model, limits, name))
    _add_sampling_routes(app, model, requests.sample)
    _add_latent_routes(app, model, limits, requests.interpolate)
    return app


def _add_info_routes(app: FastAPI, info: dict[str, Any]) -> None:
    @app.get("/api/model")
    def model_info() -> dict[str, Any]:
        """The model (its classes if it is class-conditional), the choices and the limits the page offers."""
        return info

    @app.get("/api/status")
    def status(request: Request) -> dict[str, int]:
        """Jobs pending now (running + waiting), and completed/cancelled/failed/rejected so far."""
        return request.app.state.jobs.status()


def _add_sampling_routes(app: FastAPI, model: Model, SampleRequest: type[BaseModel]) -> None:
    @app.post("/api/sample", response_class=Response, responses={200: _PNG, **_ERRORS})
    async def sample(body: SampleRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """Draw `n` images; answer one PNG grid."""
        result = await _run(partial(run_sample, model, **body.model_dump()), request)
        if not isinstance(result, Result):
            return result
        headers = {"X-Steps": str(result.steps), "X-Seconds": f"{result.seconds:.3f}"}
        return Response(result.pngs[0], media_type="image/png", headers=headers)

    @app.post("/api/sample/stream", response_class=StreamingResponse, responses={200: _SSE, **_ERRORS})
    async def sample_stream(body: SampleRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """Draw `n` images, streaming server-sent events: `queued` {ahead}; `step` {step, steps,
        t, seconds, x0, xt} every few steps (PNG data URLs); `done` {image, n, steps, seconds}."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event: str, data: dict) -> None:  # called on the job thread
            loop.call_soon_threadsafe(events.put_nowait, (event, data))

        jobs: JobQueue = request.app.state.jobs
        ahead = jobs.status()["pending"]
        try:
            handle = jobs.submit(partial(run_sample, model, emit=emit, **body.model_dump()))
        except QueueFull as e:
            return _busy(e)
        return StreamingResponse(
            _events(handle, events, ahead, body.n), media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
            background=BackgroundTask(handle.cancel),  # also if the client left before the stream began
        )  # fmt: skip


def _add_latent_routes(
    app: FastAPI,
    model: Model,
    limits: Limits,
    InterpolationRequest: type[BaseModel],
) -> None:
    max_steps = limits.steps_cap(model.schedule.num_timesteps)

    @app.post("/api/interpolate", responses=_ERRORS)
    async def interpolate(body: InterpolationRequest, request: Request) -> Any:  # type: ignore[valid-type]
        """Frames along the slerp between the latents of two seeds, decoded with DDIM η = 0."""
        result = await _run(partial(run_interpolation, model, **body.model_dump()), request)
        if not isinstance(result, Result):
            return result
        frames = [data_url(png) for png in result.pngs]
        return {"frames": frames, "steps": result.steps, "seconds": result.seconds}

    @app.post("/api/invert", responses=_ERRORS, openapi_extra={"requestBody": _UPLOAD})
    async def invert(
        request: Request,
        steps: Annotated[int, Query(ge=1, le=max_steps, description="DDIM steps S each way")] = 20,
        spacing: Annotated[Spacing, Query(description="the timestep sub-sequence")] = "uniform",
    ) -> Any:
        """Invert an uploaded image (PNG, JPEG, …: fitted to the model's size) with S DDIM
        steps and decode it again: the input as the model sees it, the reconstruction, the MSE."""
        data = await _read_upload(request, limits.max_upload_bytes)
        if isinstance(data, Response):
            return data
        try:
            x0 = await run_in_threadpool(decode_upload, data, model.image_shape, limits.max_upload_pixels)
        except BadImage as e:
            return _field_error("body", str(e))
        result = await _run(partial(run_inversion, model, x0=x0, steps=steps, spacing=spacing), request)
        if not isinstance(result, Result):
            return result
        images = {"input": data_url(result.pngs[0]), "reconstruction": data_url(result.pngs[1])}
        return {**images, "mse": result.mse, "steps": result.steps, "seconds": result.seconds}


def _model_info(model: Model, limits: Limits, name: str) -> dict[str, Any]:
    T = model.schedule.num_timesteps
    return {
        "name": Path(name).name, "image_shape": list(model.image_shape), "prediction": model.prediction,
        "num_timesteps": T, "num_classes": model.num_classes, "class_names": list(model.class_names),
        "samplers": list(samplers.names()), "spacings": list(SPACINGS),
        "fixed_eta": {s.name: s.fixed_eta for s in samplers.registry().values()},
        "limits": {**limits.to_dict(), "max_steps": limits.steps_cap(T), "max_guidance": MAX_GUIDANCE,
                   "max_seed": MAX_SEED},
    }  # fmt: skip


def _add_assets(app: FastAPI) -> None:
    """Serve the page's three files, read once from the package, and its icon: no route maps a
    URL to a path."""
    folder = resources.files("ddim.serve") / "static"
    headers = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}
    icon = favicon()

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon_route() -> Response:
        return Response(icon, media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})

    for route, filename in ASSETS.items():
        body = (folder / filename).read_bytes()
        media = _MEDIA[Path(filename).suffix]

        def asset(body: bytes = body, media: str = media) -> Response:  # bound now, not at call
            return Response(body, media_type=media, headers=headers)

        app.add_api_route(route, asset, methods=["GET"], include_in_schema=False)


async def _run(job: Callable, request: Request) -> Result | Response:
    """Queue `job` and wait for it; answer 429 if the queue is full. If the client goes away
    first, the job is cancelled."""
    try:
        handle: Handle[Result] = request.app.state.jobs.submit(job)
    except QueueFull as e:
        return _busy(e)
    result = asyncio.ensure_future(handle.result())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        finished = result.done()
        if not finished:
            result.cancel()  # cancels the job too (Handle.result)
    return result.result() if finished else Response(status_code=_CLIENT_GONE)


async def _disconnected(request: Request) -> None:
    """Return when the client has closed the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _events(handle: Handle[Result], events: asyncio.Queue, ahead: int, n: int) -> AsyncIterator[str]:
    """The server-sent events of one streamed job; closing the stream cancels the job."""
    result = asyncio.ensure_future(handle.result())
    try:
        yield _sse("queued", {"ahead": ahead})
        while not (result.done() and events.empty()):
            get = asyncio.ensure_future(events.get())
            await asyncio.wait({get, result}, return_when=asyncio.FIRST_COMPLETED)
            if get.done():
                yield _sse(*get.result())
            else:
                get.cancel()
        done = result.result()
        yield _sse("done", {"image": data_url(done.pngs[0]), "n": n, "steps": done.steps,
                            "seconds": done.seconds})  # fmt: skip
    except Exception:  # the 200 header is sent: report in the stream, and in the log
        log.exception("streamed sampling failed")
        yield _sse("error", {"message": "sampling failed on the server (see its log)"})
    finally:
        result.cancel()
        handle.cancel()


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _read_upload(request: Request, limit: int) -> bytes | Response:
    """The request body, refused with 413 past `limit` bytes (before reading, if it says so)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _too_large(limit)
        chunks.append(chunk)
    if size == 0:
        return _field_error("body", "empty upload: send an image file as the request body")
    return b"".join(chunks)


def _too_large(limit: int) -> Response:
    size_text = f"{limit // 1024:,} KiB" if limit >= 1024 else f"{limit} bytes"
    return _message(413, f"the file is too large: the server takes uploads of at most {size_text}")


def _busy(e: QueueFull) -> Response:
    return _message(429, str(e), {"Retry-After": str(e.retry_after)})


def _field_error(where: str, message: str, kind: str = "value_error") -> Response:
    """422 in the shape of FastAPI's validation errors (the schema's HTTPValidationError)."""
    return _message(422, f"{where}: {message}", detail=[{"loc": [where], "msg": message, "type": kind}])


async def _not_json(request: Request, exc: Exception) -> Response:
    """FastAPI answers a JSON body it cannot decode (not UTF-8) with an undocumented 400: here it is
    the documented 422, like any other body that is not JSON; other HTTP errors as FastAPI has them."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        return _field_error("body", "not JSON text (a JSON object in UTF-8 is expected)", "json_invalid")
    return await http_exception_handler(request, exc)


class _JSONBodyLimit:
    """ASGI middleware: a request body (JSON: all but the /api/invert upload) is refused with 413
    past `limit` bytes, before it is parsed (a declared length at once, a chunked one as soon as
    it passes the limit)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] == "/api/invert":  # uploads: their own limit
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay(message, receive), send)
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self._refuse(scope, receive, send)
        whole = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay(whole, receive), send)

    async def _refuse(self, scope: dict, receive: Callable, send: Callable) -> None:
        size = f"{self.limit // 1024:,} KiB" if self.limit >= 1024 else f"{self.limit} bytes"
        await _message(413, f"the JSON body is too large: at most {size}")(scope, receive, send)


def _replay(first: dict, receive: Callable) -> Callable:
    """A `receive` that gives `first`, then what `receive` gives (a disconnect, say)."""
    pending = [first]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed


def _message(status: int, message: str, headers: dict | None = None, **extra: Any) -> Response:
    return JSONResponse({"message": message, **extra}, status_code=status, headers=headers)


async def _unprocessable(request: Request, exc: Exception) -> Response:
    """422 with FastAPI's `detail` list and a one-line `message` naming each bad field."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()  # their "input" may hold what JSON cannot (NaN): not echoed back
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    return _message(422, "; ".join(map(_one_line, errors)), detail=detail)


def _one_line(error: dict) -> str:
    """'field: what is wrong' for one pydantic error (the field path, or where: body, query)."""
    where, *path = error["loc"]
    field = ".".join(p for p in path if isinstance(p, str)) or where
    return f"{field}: {error['msg'].removeprefix('Value error, ')}"
