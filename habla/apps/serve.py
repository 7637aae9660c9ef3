"""`habla serve`: an OpenAI-compatible HTTP API over the base and fine-tuned models.

Any tool that speaks the chat-completions API (the `openai` client, LangChain,
the judge's `openai` backend, chat UIs) can talk to the persona. It runs on
uvicorn, as vLLM's and llama.cpp's Python servers do: one event loop holds every
connection (slow or idle clients cost no thread), and each generation runs in a
worker thread. One model serves every request, so generations take turns on a
lock; the ones waiting beyond `serve.queue_limit` get 503 instead of piling up.
Every adapter (the fine-tuned, the preference-tuned, each persona's own) is
loaded once on the one base and switched per request (PEFT multi-adapter).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from habla.apps.blind import BlindTest
from habla.apps.chat import group_order
from habla.apps.web import PAGES, generation_cases, is_local, page
from habla.errors import UserError
from habla.grouping import chosen_personas
from habla.model.generation import PromptTooLong, ReplyStream, fit_prompt
from habla.model.loading import as_model, load_persona_adapters, load_tuned, models_in, special_separator
from habla.params import Params, Serve, load_params

log = logging.getLogger("serve")

ROLES = {"system", "user", "assistant"}
BLIND = "/v1/habla/blind"
BLIND_BODY_BYTES = 1024  # a token and a letter
BACKLOG = 128  # connections the kernel holds before accept; a small backlog resets bursts of clients
# Routes that give out held-out chat text (or take answers about it): only for clients on this machine.
LOCAL_ONLY = {
    "/v1/habla/generations": "Held-out conversations are shown only to clients on this machine.",
    BLIND: "The blind test shows held-out conversations: it is open only to clients on this machine.",
}
# The pages are inline HTML, CSS and JS that talk to this server only: nothing else may load.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class ClientGone(Exception):
    """The client stopped sending or reading: nothing to answer, nothing to log above INFO."""


class RequestError(Exception):
    """A client mistake, answered with an OpenAI-style error body; `close` ends the connection after it (a refused
    body left unread would be taken for the next request)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        close: bool = False,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.close = status, message, param, kind, close

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclasses.dataclass(frozen=True)
class Completion:
    """A validated chat-completion request."""

    model: str
    messages: list[dict]
    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]
    stream: bool
    seed: int
    dropped_messages: int = 0


def _number(body: dict, name: str, default, low: float, high: float, kind=float):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise RequestError(400, f"`{name}` must be a {'integer' if kind is int else 'number'}.", name)
    if not low <= value <= high:
        raise RequestError(400, f"`{name}` must be between {low} and {high}, got {value}.", name)
    return kind(value)


def parse_completion(body: object, params: Params, models: tuple[str, ...]) -> Completion:
    """Check a request body the way the OpenAI API does, with a message that names the field."""
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if model not in models:
        raise RequestError(
            404, f"The model `{model}` does not exist. Available: {', '.join(models)}.", "model", "not_found_error"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "`messages` must be a non-empty list of {role, content} objects.", "messages")
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise RequestError(
                400,
                f"`messages[{index}]` needs a role ({', '.join(sorted(ROLES))}) and a string content.",
                f"messages.[{index}]",
            )
    if body.get("n", 1) != 1:
        raise RequestError(400, "Only `n`=1 is supported.", "n")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "`stop` must be a string or a list of up to 4 non-empty strings.", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "`stream` must be true or false.", "stream")
    sampling = params.evaluate.sampling
    limit = params.serve.max_tokens_limit
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return Completion(
        model=model,
        messages=[{"role": m["role"], "content": m["content"]} for m in messages],
        temperature=_number(body, "temperature", sampling.temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", sampling.top_p, 0.0, 1.0) or 1.0,
        max_tokens=_number(
            {"max_tokens": max_tokens}, "max_tokens", min(sampling.max_new_tokens * 4, limit), 1, limit, int
        ),
        stop=tuple(stop),
        stream=stream,
        seed=_number(body, "seed", sampling.seed, 0, 2**63 - 1, int),
    )


class Engine:
    """The loaded model, one generation at a time, with a bounded waiting line."""

    def __init__(self, model, tokenizer, params: Params, own_adapters: dict[str, str] | None = None):
        """`own_adapters`: each persona's own adapter loaded on `model` (`load_persona_adapters`), id → its name."""
        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.lock = threading.Lock()
        self.waiting = threading.BoundedSemaphore(params.serve.queue_limit + 1)
        self.created = int(time.time())
        adapters = tuple(sorted(models_in(model), key=lambda name: name != "tuned"))  # the page's default first
        self.voices = persona_models(params, adapters, own_adapters or {})
        self.personas = [ident for ident in self.voices if CONDITIONED not in ident]
        self.group = group_order(self.personas)  # who answers in the page's group mode, in turn
        self.models = (*self.voices, *adapters)

    def fit(self, request: Completion) -> Completion:
        """The request within the model's context, checked before it waits for the model: a prompt that cannot fit
        is a 400 naming the limit (or loses its oldest turns under `serve.truncate: oldest`), and max_tokens is
        cut to the room left. A persona's model gets that persona's system turn unless the request sends one."""
        oldest = self.params.serve.truncate == "oldest"
        messages = request.messages
        if request.model in self.voices and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.voices[request.model][1]}, *messages]
        try:
            messages, max_tokens, dropped = fit_prompt(
                self.model, self.tokenizer, messages, request.max_tokens, drop_oldest=oldest
            )
        except PromptTooLong as err:
            hint = "" if oldest else ", or start the server with serve.truncate: oldest"
            raise RequestError(
                400,
                f"The prompt is {err.length} tokens after the chat template; this model's context is {err.window} "
                f"tokens. Send a shorter conversation{hint}.",
                "messages",
            ) from None
        return dataclasses.replace(request, messages=messages, max_tokens=max_tokens, dropped_messages=dropped)

    def stream(self, request: Completion) -> ReplyStream:
        sampling = dataclasses.replace(
            self.params.evaluate.sampling,
            temperature=request.temperature,
            top_p=request.top_p,
            max_new_tokens=request.max_tokens,
            seed=request.seed,
        )
        separator = special_separator(self.params.group.separator)
        keep = [separator] if separator else []  # a learned separator token stays in the text: it ends a message
        return ReplyStream(self.model, self.tokenizer, request.messages, sampling, stop=request.stop, keep_tokens=keep)

    def admit(self) -> None:
        """A place in the line for one request, or a 503 when `serve.queue_limit` requests already wait; given back
        by `release` when its generation ends."""
        if not self.waiting.acquire(blocking=False):
            raise RequestError(503, "The server is busy; retry shortly.", kind="server_error")

    def release(self) -> None:
        self.waiting.release()

    def generate(self, request: Completion, consume) -> None:
        """Hold the model for one admitted request; `consume` iterates the stream (in the calling thread)."""
        with self.lock:
            stream = self.stream(request)
            adapter = self.voices[request.model][0] if request.model in self.voices else request.model
            with as_model(self.model, adapter):
                consume(stream)


CONDITIONED = ":conditioned"  # `nico:conditioned`: nico spoken by the speaker-conditioned adapter


def persona_models(params: Params, adapters: tuple[str, ...], own: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Each persona (`group.speakers: conditioned`) as a model of its own: its id → (the adapter that speaks, the
    system turn naming it). The persona's own adapter (`train_persona@<id>`) speaks where there is one, and the
    speaker-conditioned adapter then answers as `<id>:conditioned`, so a client can compare the two; else the
    conditioned one answers as `<id>` (its preference-tuned adapter where `prefer` made one)."""
    if params.group.speakers != "conditioned":
        return {}
    voice = "preferred" if "preferred" in adapters else "tuned"
    if voice not in adapters:
        return {}
    models = {}
    for ident, persona in chosen_personas(params).items():
        models[ident] = (own.get(ident, voice), persona.system_prompt)
        if ident in own:
            models[ident + CONDITIONED] = (voice, persona.system_prompt)
    return models


def completion_body(request: Completion, stream: ReplyStream, ident: str, created: int) -> dict:
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": stream.text},
                "finish_reason": stream.finish_reason,
            }
        ],
        "usage": usage(request, stream),
    }


def usage(request: Completion, stream: ReplyStream) -> dict:
    counts = {
        "prompt_tokens": stream.prompt_tokens,
        "completion_tokens": stream.completion_tokens,
        "total_tokens": stream.prompt_tokens + stream.completion_tokens,
    }
    return {**counts, "truncated_messages": request.dropped_messages} if request.dropped_messages else counts


def chunk(request: Completion, ident: str, created: int, delta: dict, finish: str | None = None) -> bytes:
    body = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": request.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


class ClientTimedOut(Exception):
    """The client stopped sending its body: answered 408 and the connection closed."""


def head_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol, hanging up on a connection whose request head has not arrived within `seconds`.

    uvicorn times out idle keep-alive connections but waits forever for the rest of a request's head (a slowloris
    client holds its connection open with a byte a minute); written here because uvicorn has no such setting."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadInTime(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            if self._waiting_for_head() and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if not self._waiting_for_head():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadInTime


class Reply:
    """One generation running in a worker thread, its pieces handed to the event loop through a queue, cancellable
    from the loop (a client that went away stops the model at its next token)."""

    END = object()

    def __init__(self, engine: Engine, request: Completion, loop: asyncio.AbstractEventLoop):
        self.engine, self.request, self.loop = engine, request, loop
        self.pieces: asyncio.Queue = asyncio.Queue()
        self.stream: ReplyStream | None = None
        self.cancelled = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> None:
        """Run in a thread of its own (the line is bounded by `serve.queue_limit`, so the threads are too); the
        request's place in the line is given back when the generation ends, however it ends."""
        threading.Thread(target=self._work, daemon=True).start()

    def cancel(self) -> None:
        self.cancelled.set()
        if self.stream is not None:
            self.stream.cancel()

    def _put(self, item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server stopped, nobody is reading
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, item)

    def _work(self) -> None:
        try:
            self.engine.generate(self.request, self._consume)
        except BaseException as err:  # noqa: BLE001 - handed to the loop, which answers or logs it
            self.error = err
        finally:
            self.engine.release()
            self._put(self.END)

    def _consume(self, stream: ReplyStream) -> None:
        self.stream = stream
        if self.cancelled.is_set():
            stream.cancel()
        with contextlib.closing(iter(stream)) as pieces:
            for piece in pieces:
                self._put(piece)

    async def __aiter__(self):
        while (piece := await self.pieces.get()) is not self.END:
            yield piece
        if self.error is not None:
            raise self.error


class API:
    """The ASGI application: the OpenAI-compatible API, the pages and the blind test, over one `Engine`.

    Written against ASGI directly (Starlette's request and response classes, no router): every route's checks are
    in one place and in the order that matters (authentication before the loopback-only check, body limits before
    the body is read), and a streamed reply sends each piece as it comes and stops the model when the client
    leaves."""

    def __init__(self, engine: Engine, api_key: str | None):
        self.engine, self.api_key = engine, api_key
        self.blind = BlindTest()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            if request.method == "POST":
                await self.post(request, send)
            elif request.method in ("GET", "HEAD"):
                await self.get(request).__call__(scope, receive, send)
            else:
                raise RequestError(405, f"Method {request.method} is not allowed.", kind="invalid_request_error")
        except RequestError as err:
            await error_response(err).__call__(scope, receive, send)
        except ClientTimedOut:
            timeout = RequestError(408, "The request body did not arrive in time.", close=True)
            await error_response(timeout).__call__(scope, receive, send)
        except ClientGone as err:
            log.info("%s went away (%s); its request was dropped", client_of(request), err)
        except Exception:  # noqa: BLE001 - a server answers every request; the traceback goes to the log
            log.exception("request failed")
            failed = RequestError(500, "Internal error while generating.", kind="server_error")
            await error_response(failed).__call__(scope, receive, send)

    def authorised(self, request: Request) -> bool:
        if not self.api_key:
            return True
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    def check_access(self, request: Request, route: str) -> None:
        if not self.authorised(request):
            raise RequestError(401, "Invalid API key.", kind="authentication_error")
        if route in LOCAL_ONLY and not is_local(client_of(request)):
            raise RequestError(403, LOCAL_ONLY[route], kind="permission_error")

    def get(self, request: Request) -> Response:
        route, engine = request.url.path, self.engine
        if route in ("/health", "/healthz"):
            return JSONResponse({"status": "ok", "models": list(engine.models)})
        if route in PAGES:
            return self.page(PAGES[route])
        self.check_access(request, route)
        if route == "/v1/habla/generations":
            return JSONResponse(generation_cases())
        if route == BLIND:
            return JSONResponse(self.blind.state())
        if route == "/v1/models":
            data = [{"id": m, "object": "model", "created": engine.created, "owned_by": "habla"} for m in engine.models]
            return JSONResponse({"object": "list", "data": data})
        raise RequestError(404, f"No route {route}.", kind="not_found_error")

    def page(self, name: str) -> Response:
        params = self.engine.params
        config = {
            "separator": special_separator(params.group.separator) or params.group.separator,
            "key_required": bool(self.api_key),
            "max_tokens_limit": params.serve.max_tokens_limit,
            "personas": self.engine.personas,
            "group": self.engine.group,
        }
        headers = {
            "Content-Security-Policy": PAGE_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        }
        return Response(page(name, config), media_type="text/html; charset=utf-8", headers=headers)

    async def post(self, request: Request, send) -> None:
        route = request.url.path
        if route not in ("/v1/chat/completions", BLIND):
            raise RequestError(404, f"No route {route}.", kind="not_found_error")
        self.check_access(request, route)
        settings = self.engine.params.serve
        limit = BLIND_BODY_BYTES if route == BLIND else settings.max_body_bytes
        raw = await read_body(request, limit, settings.read_timeout_s)
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "The request body is not valid JSON.") from None
        if route == BLIND:
            await self.blind_answer(body).__call__(request.scope, request.receive, send)
            return
        engine = self.engine
        completion = await asyncio.to_thread(engine.fit, parse_completion(body, engine.params, engine.models))
        engine.admit()
        reply = Reply(engine, completion, asyncio.get_running_loop())
        reply.start()
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
        try:
            if completion.stream:
                await stream_reply(send, reply, watcher, completion, ident, created, settings.read_timeout_s)
            else:
                await whole_reply(request, send, reply, watcher, completion, ident, created)
        finally:
            watcher.cancel()
            reply.cancel()

    def blind_answer(self, body: object) -> Response:
        """Store one answer of the blind test (`{"token", "choice"}`) and send the next pair."""
        if not isinstance(body, dict):
            raise RequestError(400, 'Send {"token": ..., "choice": "A" or "B"}.')
        try:
            self.blind.answer(body.get("token"), body.get("choice"))
        except ValueError as err:
            raise RequestError(409 if body.get("choice") in ("A", "B") else 400, str(err)) from None
        return JSONResponse(self.blind.state())


def client_of(request: Request) -> str:
    return request.client.host if request.client else ""


def error_response(err: RequestError) -> Response:
    return JSONResponse(err.body(), status_code=err.status, headers={"Connection": "close"} if err.close else {})


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, never more than `limit` bytes: the declared length is checked before anything is read, and a
    client that stops sending for `timeout` seconds gets a 408. h11 itself refuses a malformed Content-Length
    (400) before the application sees the request; a missing one, or a chunked body, is refused here (411)."""
    declared = request.headers.get("content-length")
    if declared is None or "chunked" in request.headers.get("transfer-encoding", "").lower():
        raise RequestError(411, "Send the body with a Content-Length header.", close=True)
    digits = declared.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise RequestError(400, f"Content-Length must be a number of bytes, got {declared[:40]!r}.", close=True)
    if int(digits) > limit:
        raise RequestError(413, f"The request body is {int(digits)} bytes; the limit is {limit}.", close=True)
    body = bytearray()
    while True:
        try:
            message = await asyncio.wait_for(request.receive(), timeout)
        except TimeoutError:
            raise ClientTimedOut from None
        if message["type"] == "http.disconnect":
            raise ClientGone("the body ended before its Content-Length")
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


async def wait_for_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def next_piece(pieces, watcher: asyncio.Future):
    """The reply's next piece, or ClientGone as soon as the client disconnects (whichever comes first)."""
    step = asyncio.ensure_future(anext(pieces))
    done, _ = await asyncio.wait({step, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if step not in done:
        step.cancel()
        raise ClientGone("disconnected")
    return step.result()


async def whole_reply(request, send, reply: Reply, watcher, completion: Completion, ident: str, created: int):
    pieces = aiter(reply)
    with contextlib.suppress(StopAsyncIteration):
        while True:
            await next_piece(pieces, watcher)
    body = completion_body(completion, reply.stream, ident, created)
    await JSONResponse(body).__call__(request.scope, request.receive, send)


async def stream_reply(
    send, reply: Reply, watcher, completion: Completion, ident: str, created: int, timeout: float
) -> None:
    """Server-sent events, one per piece; an error after the headers ends the stream with an error event. A client
    that stops reading (its socket buffer full for `timeout` seconds) is let go, and the model with it."""
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def event(data: bytes, more: bool = True) -> None:
        try:
            await asyncio.wait_for(send({"type": "http.response.body", "body": data, "more_body": more}), timeout)
        except TimeoutError:
            raise ClientGone("not reading its stream") from None

    await event(chunk(completion, ident, created, {"role": "assistant", "content": ""}))
    pieces = aiter(reply)
    try:
        while True:
            try:
                piece = await next_piece(pieces, watcher)
            except StopAsyncIteration:
                break
            await event(chunk(completion, ident, created, {"content": piece}))
    except ClientGone:
        raise
    except Exception:  # noqa: BLE001 - the headers are sent: the error goes into the stream, the traceback to the log
        log.exception("request failed")
        error = RequestError(500, "Internal error while generating.", kind="server_error").body()
        await event(f"data: {json.dumps(error)}\n\n".encode(), more=False)
        return
    await event(chunk(completion, ident, created, {}, reply.stream.finish_reason))
    await event(b"data: [DONE]\n\n", more=False)


class ServeServer:
    """uvicorn serving `API` on a socket bound at once (port 0 gives a free port, known before serving starts);
    `serve_forever` blocks until `shutdown` (or Ctrl-C in the main thread)."""

    def __init__(self, address: tuple[str, int], engine: Engine, api_key: str | None):
        import uvicorn

        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(address)
        self.socket.listen(BACKLOG)
        self.server_address = self.socket.getsockname()
        self.app = API(engine, api_key)
        self.api_key, self.blind = api_key, self.app.blind
        timeout = engine.params.serve.read_timeout_s
        config = uvicorn.Config(
            self.app,
            http=head_timeout_protocol(timeout),
            timeout_keep_alive=max(1, int(timeout)),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            backlog=BACKLOG,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.stopped = threading.Event()
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start and stop lines, not its errors

    def serve_forever(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.stopped.set()

    def shutdown(self) -> None:
        self.server.should_exit = True
        self.stopped.wait(30)

    def server_close(self) -> None:
        self.socket.close()


def loopback_only(host: str) -> bool:
    """Whether every address `host` names is this machine's loopback (a name is resolved; one that does not
    resolve is not taken for loopback)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        return False
    return bool(addresses) and all(is_local(address.split("%")[0]) for address in addresses)


def api_key_for(settings: Serve, network_without_key: bool = False) -> str | None:
    """The API key (None: no key), refusing to serve a model trained on private chats beyond this machine without
    one: it can be prompted to repeat them. `network_without_key` (`--network-without-key`) is the user saying
    they mean it."""
    api_key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    if settings.api_key_env and not api_key:
        raise UserError(f"serve.api_key_env names `{settings.api_key_env}`, but that environment variable is empty.")
    if not api_key and not network_without_key and not loopback_only(settings.host):
        raise UserError(
            f"habla serve: {settings.host} reaches beyond this machine and no API key is set, so anyone on the "
            "network could prompt the persona into repeating its chats: set one (`export HABLA_KEY=$(openssl rand "
            "-hex 16)` and `--api-key-env HABLA_KEY`, or serve.api_key_env), or pass --network-without-key if you "
            "mean it."
        )
    return api_key


def make_server(engine: Engine, settings: Serve, network_without_key: bool = False) -> ServeServer:
    return ServeServer((settings.host, settings.port), engine, api_key_for(settings, network_without_key))


def served_addresses(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        return f"every address of this machine, port {port}"
    return f"http://{host}:{port}/v1" if ":" not in host else f"http://[{host}]:{port}/v1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="habla serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--api-key-env", help="environment variable that holds the API key")
    parser.add_argument(
        "--network-without-key",
        action="store_true",
        help="serve a non-loopback address without an API key (anyone who reaches it can prompt the persona)",
    )
    args = parser.parse_args(argv)
    params = load_params()
    overrides = {
        k: v
        for k, v in {"host": args.host, "port": args.port, "api_key_env": args.api_key_env}.items()
        if v is not None
    }
    params = dataclasses.replace(params, serve=dataclasses.replace(params.serve, **overrides))
    api_key_for(params.serve, args.network_without_key)  # a refusal before minutes of loading the model
    model, tokenizer = load_tuned(preferred=True)
    own = load_persona_adapters(model, chosen_personas(params)) if params.group.speakers == "conditioned" else {}
    engine = Engine(model, tokenizer, params, own)
    server = make_server(engine, params.serve, args.network_without_key)
    host, port = server.server_address[:2]
    log.info(
        "serving models %s on %s; API key %s (Ctrl-C stops)",
        ", ".join(engine.models),
        served_addresses(host, port),
        "required" if server.api_key else "not required",
    )
    if server.api_key is None and not loopback_only(host):
        log.warning("no API key: anyone who can reach this machine can prompt the persona (--network-without-key)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
