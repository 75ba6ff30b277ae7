"""The OpenAI-compatible HTTP API over the generation engine.

Routes: POST /v1/chat/completions, POST /v1/completions (both streamed as server-sent events the way OpenAI
sends them, or whole), GET /v1/models, GET /health, GET / (the web chat page). Every client mistake answers
in OpenAI's error JSON shape (400 for bad bodies and over-long prompts, 401 for a wrong or missing API key,
503 when the queue is full); nothing leaks a traceback. The model runs on the engine's `Scheduler` thread;
a client that disconnects cancels its job, which frees its slot at the next token.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generate import Chunk, Job, QueueFullError, Scheduler, encode_chat, encode_text
from ..sampling import SamplingParams

log = logging.getLogger("moe_gguf.server")

STATIC = Path(__file__).resolve().parent / "static"
DISCONNECT_POLL_S = 0.5


# ------------------------------------------------------------------------------------------------ errors
class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


# ------------------------------------------------------------------------------------------------ request bodies
Num = Union[StrictFloat, StrictInt]
BaseModelT = TypeVar("BaseModelT", bound=BaseModel)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr | None = None
    temperature: Num | None = Field(None, ge=0)
    top_p: Num | None = Field(None, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=0)  # llama.cpp extension
    min_p: Num | None = Field(None, ge=0, le=1)  # llama.cpp extension
    repeat_penalty: Num | None = Field(None, gt=0)  # llama.cpp extension
    repeat_last_n: StrictInt | None = Field(None, ge=-1)  # llama.cpp extension
    max_tokens: StrictInt | None = Field(None, ge=0)
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: dict[str, Any] | None = None
    n: StrictInt = 1
    presence_penalty: Num | None = Field(None, ge=-2, le=2)  # accepted, not applied
    frequency_penalty: Num | None = Field(None, ge=-2, le=2)  # accepted, not applied

    def sampling_params(self) -> SamplingParams:
        d = SamplingParams()
        return SamplingParams(
            temperature=float(d.temperature if self.temperature is None else self.temperature),
            top_k=d.top_k if self.top_k is None else self.top_k,
            top_p=float(d.top_p if self.top_p is None else self.top_p),
            min_p=float(d.min_p if self.min_p is None else self.min_p),
            repeat_penalty=float(d.repeat_penalty if self.repeat_penalty is None else self.repeat_penalty),
            repeat_last_n=d.repeat_last_n if self.repeat_last_n is None else self.repeat_last_n,
            seed=None if self.seed is None or self.seed < 0 else self.seed,
        )

    def stops(self) -> list[str]:
        s = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(s) > 16:
            raise APIError(400, "'stop' takes at most 16 strings", param="stop")
        return s

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage", False))


class _TextPart(BaseModel):
    type: StrictStr
    text: StrictStr | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[_TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for p in self.content:
            if p.type != "text" or p.text is None:
                raise APIError(400, f"only text content parts are supported, got type {p.type!r}", param="messages")
            parts.append(p.text)
        return "".join(parts)


class ChatRequest(_Sampling):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=0)


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictInt] | list[StrictStr] | list[list[StrictInt]]
    echo: StrictBool = False


def _validation_message(errs: Sequence[Any]) -> tuple[str, str | None]:
    if not errs:
        return "invalid request body", None
    e = errs[0]
    if e.get("type") == "json_invalid":
        return "We could not parse the JSON body of your request: it is not valid JSON.", None
    # drop pydantic's union-branch names (e.g. 'str', 'list[...]') so the path reads like the JSON
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    loc = [x for x in loc if not any(c in x for c in "[]") and x not in ("str", "int", "float", "bool")]
    where = ".".join(loc) or "body"
    if e.get("type") == "missing":
        return f"'{where}' is a required field", where
    return f"'{where}': {e.get('msg', 'invalid value')}", where


async def _parse(request: Request, model: type[BaseModelT]) -> BaseModelT:
    """The JSON body as `model`, whatever Content-Type the client sent; 400 in OpenAI's shape otherwise."""
    raw = await request.body()
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "We could not parse the JSON body of your request: it is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        msg, param = _validation_message(e.errors())
        raise APIError(400, msg, param=param) from None


# ------------------------------------------------------------------------------------------------ the app
class _State:
    def __init__(self, model: Any, tokenizer: Any, template: Any, name: str, api_key: str | None,
                 scheduler: Scheduler) -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.name, self.api_key, self.scheduler = name, api_key, scheduler
        self.created = int(time.time())


def create_app(
    model: Any,
    tokenizer: Any,
    template: Any | None,
    *,
    model_name: str = "model",
    api_key: str | None = None,
    parallel: int = 1,
    max_queue: int = 64,
) -> FastAPI:
    """The FastAPI app serving `model`; its lifespan starts and stops the scheduler thread."""
    scheduler = Scheduler(model, tokenizer, n_slots=parallel, max_queue=max_queue)
    st = _State(model, tokenizer, template, model_name, api_key, scheduler)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="moe-gguf", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.moe = st

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc.errors())
        return APIError(400, msg, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = {404: f"no route {request.method} {request.url.path}", 405: f"method {request.method} not allowed here"}
        return APIError(exc.status_code, msg.get(exc.status_code, str(exc.detail)),
                        "invalid_request_error" if exc.status_code < 500 else "server_error").response()

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, "internal server error", "server_error").response()

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Any:
        if st.api_key and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            if not header.lower().startswith("bearer "):
                return APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                                code="invalid_api_key").response()
            if not hmac.compare_digest(header[7:].strip().encode(), st.api_key.encode()):
                return APIError(401, "incorrect API key provided", code="invalid_api_key").response()
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "slots": scheduler.n_slots, "active": scheduler.n_active,
                "waiting": scheduler.n_waiting}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": st.name, "object": "model", "created": st.created, "owned_by": "moe-gguf",
             "meta": {"n_ctx": int(model.n_ctx), "n_vocab": int(model.n_vocab)}}]}

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await _parse(request, ChatRequest)
        if st.template is None:
            raise APIError(400, "this model has no chat template; use /v1/completions")
        for i, m in enumerate(body.messages):
            if m.content is None and m.role != "assistant":
                raise APIError(400, f"'messages.{i}.content' is required for role {m.role!r}", param=f"messages.{i}.content")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            ids = await run_in_threadpool(encode_chat, tokenizer, st.template, messages)
        except APIError:
            raise
        except Exception as e:  # a template that rejects the conversation (e.g. roles out of order)
            raise APIError(400, f"cannot apply the chat template: {e}", param="messages") from None
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await _complete(request, body, ids, max_tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await _parse(request, CompletionRequest)
        if body.echo:
            raise APIError(400, "'echo' is not supported", param="echo")
        p = body.prompt
        if isinstance(p, list) and p and isinstance(p[0], (str, list)):
            if len(p) != 1:
                raise APIError(400, "only one prompt per request is supported", param="prompt")
            p = p[0]
        if isinstance(p, str):
            ids = await run_in_threadpool(encode_text, tokenizer, p)
        else:
            ids = list(p)
            bad = [t for t in ids if not 0 <= t < int(model.n_vocab)]
            if bad:
                raise APIError(400, f"prompt token id {bad[0]} is outside the vocabulary [0, {model.n_vocab})",
                               param="prompt")
        return await _complete(request, body, ids, body.max_tokens, chat=False)

    async def _complete(request: Request, body: _Sampling, ids: list[int], max_tokens: int | None,
                        chat: bool) -> Any:
        n_ctx = int(model.n_ctx)
        if body.n != 1:
            raise APIError(400, "only n = 1 is supported", param="n")
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if len(ids) >= n_ctx:
            raise APIError(400, f"This model's maximum context length is {n_ctx} tokens. However, your "
                           f"{'messages' if chat else 'prompt'} resulted in {len(ids)} tokens.",
                           param="messages" if chat else "prompt", code="context_length_exceeded")
        room = n_ctx - len(ids)
        if max_tokens is None:
            max_tokens = room
        elif max_tokens > room:
            raise APIError(400, f"max_tokens is too large: the prompt is {len(ids)} tokens and the context "
                           f"holds {n_ctx}, so at most {room} tokens can be generated", param="max_tokens",
                           code="context_length_exceeded")
        try:
            params = body.sampling_params()
        except (TypeError, ValueError) as e:
            raise APIError(400, str(e)) from None
        stops = body.stops()

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk | BaseException] = asyncio.Queue()

        def on_event(ev: Chunk | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        job = Job(ids, params, max_tokens, stops, on_event)
        try:
            scheduler.submit(job)
        except QueueFullError as e:
            raise APIError(503, str(e), "server_error", code="server_busy") from None

        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"

        def usage() -> dict[str, int]:
            c = job.stats.completion_tokens if job.stats else 0
            return {"prompt_tokens": len(ids), "completion_tokens": c, "total_tokens": len(ids) + c}

        async def next_event() -> Chunk | BaseException | None:
            """The next event, or None when the client went away."""
            while True:
                try:
                    return await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return None

        def error_of(ev: BaseException) -> APIError:
            if isinstance(ev, QueueFullError):
                return APIError(503, str(ev), "server_error", code="server_busy")
            if isinstance(ev, (ValueError, TypeError)):
                return APIError(400, str(ev))
            log.error("generation failed: %r", ev)
            return APIError(500, "generation failed", "server_error")

        if not body.stream:
            parts: list[str] = []
            try:
                while True:
                    ev = await next_event()
                    if ev is None:
                        job.cancel()
                        return JSONResponse({}, status_code=499)
                    if isinstance(ev, BaseException):
                        raise error_of(ev)
                    parts.append(ev.text)
                    if ev.finish_reason is not None:
                        break
            finally:
                job.cancel()  # no-op when finished; frees the slot if this handler was cancelled
            text = "".join(parts)
            choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": ev.finish_reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            return {"id": rid, "object": obj, "created": created, "model": st.name, "choices": [choice],
                    "usage": usage()}

        include_usage = body.include_usage()

        def sse(payload: Any) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
            c: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
            if chat:
                delta: dict[str, Any] = {}
                if first:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                c["delta"] = delta
            else:
                c["text"] = text or ""
            out = {"id": rid, "object": obj + ".chunk" if chat else obj, "created": created, "model": st.name,
                   "choices": [c]}
            if include_usage:
                out["usage"] = None
            return sse(out)

        async def stream() -> AsyncIterator[str]:
            try:
                if chat:
                    yield chunk("", None, first=True)
                while True:
                    ev = await next_event()
                    if ev is None:
                        return
                    if isinstance(ev, BaseException):
                        yield sse(error_of(ev).body())
                        return
                    if ev.text:
                        yield chunk(ev.text, None)
                    if ev.finish_reason is not None:
                        yield chunk(None if chat else "", ev.finish_reason)
                        if include_usage:
                            yield sse({"id": rid, "object": obj + ".chunk" if chat else obj, "created": created,
                                       "model": st.name, "choices": [], "usage": usage()})
                        yield "data: [DONE]\n\n"
                        return
            finally:
                job.cancel()  # the client left (or we are done): free the slot at the next step

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
          ctx_size: int = 4096, threads: int = 0, parallel: int = 1, max_queue: int = 64,
          log_level: str = "info", populate: bool = True) -> None:
    """Load the model (populate: map the whole file at load, see load_model) and run the server until interrupted."""
    import os

    import uvicorn

    from ..models import load_model
    from ..tokenizer import Tokenizer

    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"model file not found: {model_path}")
    model = load_model(model_path, n_ctx=ctx_size or None, n_threads=threads if threads > 0 else None, populate=populate)
    tok = Tokenizer.from_gguf(model.file)
    try:
        from ..chat import ChatTemplate

        template = ChatTemplate.from_gguf(model.file)
    except Exception as e:  # no template in the file: completions still work
        log.warning("no usable chat template (%s); /v1/chat/completions will answer 400", e)
        template = None
    name = str(model.file.metadata.get("general.name") or os.path.basename(model_path))
    app = create_app(model, tok, template, model_name=name, api_key=api_key, parallel=parallel, max_queue=max_queue)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the model", host)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
