"""The HTTP API of the prompt server (FastAPI; OpenAPI page at `/docs`, schema at `/openapi.json`).

    POST   /v1/generate          {"prompt", "inputs", "max_length", "method", "beam_size",
                                  "truncate"}
    POST   /v1/classify          {"prompt", "inputs", "labels", "truncate"}
    GET    /v1/prompts           served prompts, the bank's size, prompts not served and why
    GET    /v1/prompts/{name}
    PUT    /v1/prompts/{name}    body: a .npy file (application/octet-stream), {"prompt": [[...]]},
                                 or a zipped PEFT prompt-tuning adapter folder (application/zip)
    DELETE /v1/prompts/{name}
    GET    /healthz              liveness: 200 as soon as the listener is up (status, ready,
                                  bank size, queue, compile counts)
    GET    /readyz               readiness: 200 once every warm-up program is compiled, else 503;
                                  both with the progress (compiled / total, which programs)
    GET    /metrics              Prometheus text format

Requests are answered before the server is ready: one whose program is not compiled yet has it
compiled at once, ahead of the warm-up's order, and waits for that program only.

Errors are JSON `{"error": message, ...}`: 400 bad input (malformed JSON, missing or unknown
fields, over-long inputs, a prompt of the wrong shape or dtype, a corrupt .npy), 404 unknown prompt
(listing the served ones), 413 upload too large, 429 queue full (with Retry-After), 503 draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Literal

import fastapi
import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from prompt_tuning.prompts import peft_format
from prompt_tuning.serve import batcher as batcher_lib
from prompt_tuning.serve import registry
from prompt_tuning.serve.metrics import CONTENT_TYPE
from prompt_tuning.serve.service import ApiError, Service


class GenerateRequest(BaseModel):
    """Decode outputs for inputs with one prompt."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(description="The prompt's (task's) name.")
    inputs: str | list[str] = Field(description="One text or a list of texts.")
    max_length: int | None = Field(
        None, ge=1, description="Most output tokens (EOS included); default DEFAULT_MAX_LENGTH."
    )
    method: Literal["greedy", "beam"] = "greedy"
    beam_size: int | None = Field(None, ge=1, description="Beams (one of BEAM_SIZES).")
    truncate: bool = Field(False, description="Cut over-long inputs instead of refusing them.")


class ClassifyRequest(BaseModel):
    """Rank label strings by their log-likelihood given each input and the prompt."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    inputs: str | list[str]
    labels: list[str] | None = Field(None, description="Default: the task's label strings.")
    truncate: bool = False


def _batch_json(info: batcher_lib.BatchInfo, queue_s: float) -> dict[str, Any]:
    return {
        "rows": info.rows,
        "prompts": info.prompts,
        "queue_ms": round(1e3 * queue_s, 3),
        "compute_ms": round(1e3 * info.compute_s, 3),
    }


def _validation_message(error: RequestValidationError) -> str:
    problems = []
    for e in error.errors():
        if e.get("type") == "json_invalid":
            return f"Malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}."
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        problems.append(f"{where}: {e.get('msg')}")
    return "Invalid request: " + "; ".join(problems) + "."


def _install_handlers(app: fastapi.FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if error.status == 429 else None
        body = {"error": error.message, **error.details}
        return JSONResponse(body, status_code=error.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(error)}, status_code=400)

    @app.middleware("http")
    async def count(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception as error:  # noqa: BLE001 (answer 500 and keep serving)
            message = f"Internal error: {type(error).__name__}: {error}"
            response = JSONResponse({"error": message}, status_code=500)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        service: Service = request.app.state.service
        service.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response


async def _read_prompt(request: Request, name: str, limit: int) -> tuple[Any, str]:
    """The uploaded prompt: a .npy body, JSON {"prompt": [[...]]}, or a zipped PEFT adapter."""
    size = int(request.headers.get("content-length") or 0)
    if size > limit:
        raise ApiError(413, f"The upload has {size} bytes; the limit is {limit}.")
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, f"The upload has {len(body)} bytes; the limit is {limit}.")
    if request.headers.get("content-type", "").startswith("application/zip"):
        what = f"The upload for {name!r}"
        try:
            return peft_format.read_adapter_archive(body, what), "upload (PEFT adapter)"
        except peft_format.AdapterError as error:
            raise ApiError(400, str(error)) from None
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            value = json.loads(body)["prompt"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(
                400, 'A JSON upload must be {"prompt": [[...], ...]} (P rows of H floats).'
            ) from None
        try:
            return np.asarray(value, dtype=np.float32), "upload (JSON)"
        except (ValueError, TypeError):
            raise ApiError(400, "The JSON prompt is not a rectangular array of numbers.") from None
    try:
        return registry.parse_npy(body, f"The upload for {name!r}"), "upload (.npy)"
    except registry.PromptError as error:
        raise ApiError(400, str(error)) from None


def create_app(service: Service, drain_timeout: float | None = 30.0) -> fastapi.FastAPI:
    """The FastAPI app over `service`: on start-up it starts the service's warm-up (if not yet
    started), on shutdown it drains the service's queue."""

    @contextlib.asynccontextmanager
    async def lifespan(app: fastapi.FastAPI):
        service.start_warm_up()  # in the background: the listener comes up meanwhile
        yield
        service.close(drain_timeout)

    app = fastapi.FastAPI(
        title="prompt_tuning server",
        description="Many soft prompts over one frozen T5, in mixed-task batches.",
        lifespan=lifespan,
    )
    app.state.service = service
    _install_handlers(app)
    _add_inference_routes(app, service)
    _add_prompt_routes(app, service)
    return app


def _add_inference_routes(app: fastapi.FastAPI, service: Service) -> None:
    """POST /v1/generate and /v1/classify."""

    @app.post("/v1/generate")
    async def generate(request: GenerateRequest) -> dict[str, Any]:
        service.prompt_or_404(request.prompt)
        limits, buckets = service.config.limits, service.config.buckets
        max_length = request.max_length or min(limits.default_max_length, buckets.decode_length[-1])
        if max_length > buckets.decode_length[-1]:
            raise ApiError(
                400,
                f"max_length {max_length} exceeds {buckets.decode_length[-1]}, the largest of "
                "DECODE_LENGTH_BUCKETS.",
            )
        beam = 0
        if request.method == "beam":
            beam = request.beam_size or service.config.beam_sizes[0]
            if beam not in service.config.beam_sizes:
                raise ApiError(
                    400,
                    f"beam_size {beam} is not served; BEAM_SIZES = {service.config.beam_sizes}.",
                )
        tokens = service.tokenize(request.inputs, request.truncate)
        items = [
            batcher_lib.Item(request.method, request.prompt, t, 1, max_length, beam) for t in tokens
        ]
        outputs = []
        for (out, score), info, queue_s in await service.run(items):
            entry = {"text": service.decode(out), "batch": _batch_json(info, queue_s)}
            if score is not None:
                entry["score"] = float(score)
            outputs.append(entry)
        return {"prompt": request.prompt, "outputs": outputs}

    @app.post("/v1/classify")
    async def classify(request: ClassifyRequest) -> dict[str, Any]:
        service.prompt_or_404(request.prompt)
        labels = service.labels_for(request.prompt, request.labels)
        targets = service.label_tokens(labels)
        tokens = service.tokenize(request.inputs, request.truncate)
        items = [
            batcher_lib.Item("score", request.prompt, t, len(targets), targets=targets)
            for t in tokens
        ]
        outputs = []
        for scores, info, queue_s in await service.run(items):
            best = int(max(range(len(labels)), key=lambda c: (scores[c], -c)))
            outputs.append(
                {
                    "label": labels[best],
                    "scores": [float(s) for s in scores],
                    "batch": _batch_json(info, queue_s),
                }
            )
        return {"prompt": request.prompt, "labels": labels, "outputs": outputs}


def _prompt_json(info: registry.PromptInfo) -> dict[str, Any]:
    return {"name": info.name, "length": info.length, "source": info.source}


def _add_prompt_routes(app: fastapi.FastAPI, service: Service) -> None:
    """The prompt routes, /healthz, /readyz and /metrics."""

    @app.get("/v1/prompts")
    async def list_prompts() -> dict[str, Any]:
        capacity, length = service.registry.shape
        return {
            "prompts": [_prompt_json(i) for i in service.registry.infos()],
            "bank": {"capacity": capacity, "prompt_length": length},
            "model_dim": service.engine.embed_dim,
            "not_served": [{"name": n, "reason": r} for n, r in sorted(service.skipped.items())],
        }

    @app.get("/v1/prompts/{name}")
    async def get_prompt(name: str) -> dict[str, Any]:
        return _prompt_json(service.prompt_or_404(name))

    @app.put(
        "/v1/prompts/{name}",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "application/json": {"schema": {"type": "object"}},
                    "application/zip": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def put_prompt(name: str, request: Request) -> JSONResponse:
        prompt, source = await _read_prompt(request, name, service.config.limits.max_upload_bytes)
        # A resized bank compiles here: off the event loop, so other requests keep being served.
        result = await asyncio.to_thread(service.put_prompt, name, prompt, source)
        body = {
            **_prompt_json(result.info),
            "replaced": result.replaced,
            "bank": {"capacity": result.shape[0], "prompt_length": result.shape[1]},
            "recompiled": result.resized,
        }
        return JSONResponse(body, status_code=200 if result.replaced else 201)

    @app.delete("/v1/prompts/{name}")
    async def delete_prompt(name: str) -> dict[str, Any]:
        return {"removed": _prompt_json(service.remove_prompt(name))}

    @app.get("/healthz")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/readyz")
    async def ready() -> JSONResponse:
        progress = service.readiness()
        ok = progress["ready"] and not progress["draining"]
        return JSONResponse(progress, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        service.metrics.queue_rows.set(service.batcher.queued_rows)
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)
