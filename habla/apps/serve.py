"""`habla serve`: an OpenAI-compatible HTTP API over the base and fine-tuned models.

Any tool that speaks the chat-completions API (the `openai` client, LangChain,
the judge's `openai` backend, chat UIs) can talk to the persona. One model
serves every request, so requests take turns on a lock; the ones waiting beyond
`serve.queue_limit` get 503 instead of piling up. The server is the standard
library's threaded HTTP server: generation is serialised anyway, so an async
framework would add dependencies and no throughput.
"""

from __future__ import annotations

import argparse
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from habla.apps.blind import BlindTest
from habla.apps.web import PAGES, generation_cases, is_local, page
from habla.errors import UserError
from habla.grouping import chosen_personas
from habla.model.generation import PromptTooLong, ReplyStream, fit_prompt
from habla.model.loading import as_model, load_tuned, models_in, special_separator
from habla.params import Params, Serve, load_params

log = logging.getLogger("serve")

ROLES = {"system", "user", "assistant"}
BLIND = "/v1/habla/blind"
BLIND_BODY_BYTES = 1024  # a token and a letter
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
    """A client mistake, answered with an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

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

    def __init__(self, model, tokenizer, params: Params):
        self.model, self.tokenizer, self.params = model, tokenizer, params
        self.lock = threading.Lock()
        self.waiting = threading.BoundedSemaphore(params.serve.queue_limit + 1)
        self.created = int(time.time())
        adapters = tuple(sorted(models_in(model), key=lambda name: name != "tuned"))  # the page's default first
        self.voices = persona_models(params, adapters)
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

    def run(self, request: Completion, consume) -> None:
        """Hold the model for one request; `consume` iterates the stream."""
        if not self.waiting.acquire(blocking=False):
            raise RequestError(503, "The server is busy; retry shortly.", kind="server_error")
        try:
            with self.lock:
                stream = self.stream(request)
                adapter = self.voices[request.model][0] if request.model in self.voices else request.model
                with as_model(self.model, adapter):
                    consume(stream)
        finally:
            self.waiting.release()


def persona_models(params: Params, adapters: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Each persona of a speaker-conditioned model (`group.speakers: conditioned`) as a model of its own: its id →
    (the adapter that speaks, the system turn naming it). The preference-tuned adapter speaks where there is one."""
    if params.group.speakers != "conditioned":
        return {}
    voice = "preferred" if "preferred" in adapters else "tuned"
    if voice not in adapters:
        return {}
    return {ident: (voice, persona.system_prompt) for ident, persona in chosen_personas(params).items()}


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


class CompletionHandler(BaseHTTPRequestHandler):
    """One request of the OpenAI-compatible API; the model and the API key are the server's (see `ServeServer`)."""

    server: ServeServer
    protocol_version = "HTTP/1.1"
    server_version = "habla"

    @property
    def timeout(self) -> float:
        """Seconds a socket read or write may wait (applied by `StreamRequestHandler.setup`): a half-sent request
        or a client that stops reading a stream frees its thread instead of holding it forever."""
        return self.server.engine.params.serve.read_timeout_s

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("%s %s", self.address_string(), format % args)

    def send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorised(self) -> bool:
        api_key = self.server.api_key
        if not api_key:
            return True
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), api_key.encode())

    def send_page(self, name: str) -> None:
        params = self.server.engine.params
        config = {
            "separator": special_separator(params.group.separator) or params.group.separator,
            "key_required": bool(self.server.api_key),
            "max_tokens_limit": params.serve.max_tokens_limit,
            "personas": list(self.server.engine.voices),
        }
        data = page(name, config)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", PAGE_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's naming
        route = urlsplit(self.path).path
        if route in ("/health", "/healthz"):
            self.send_json(200, {"status": "ok", "models": list(self.server.engine.models)})
        elif route in PAGES:
            self.send_page(PAGES[route])
        elif not self.authorised():
            self.send_json(401, RequestError(401, "Invalid API key.", kind="authentication_error").body())
        elif route in LOCAL_ONLY and not is_local(self.client_address[0]):
            self.send_json(403, RequestError(403, LOCAL_ONLY[route], kind="permission_error").body())
        elif route == "/v1/habla/generations":
            self.send_json(200, generation_cases())
        elif route == BLIND:
            self.send_json(200, self.server.blind.state())
        elif route == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": self.server.engine.created, "owned_by": "habla"}
                for m in self.server.engine.models
            ]
            self.send_json(200, {"object": "list", "data": data})
        else:
            self.send_json(404, RequestError(404, f"No route {route}.", kind="not_found_error").body())

    def do_POST(self):  # noqa: N802
        try:
            if self.path not in ("/v1/chat/completions", BLIND):
                raise RequestError(404, f"No route {self.path}.", kind="not_found_error")
            if not self.authorised():
                raise RequestError(401, "Invalid API key.", kind="authentication_error")
            if self.path in LOCAL_ONLY and not is_local(self.client_address[0]):
                raise RequestError(403, LOCAL_ONLY[self.path], kind="permission_error")
            limit = BLIND_BODY_BYTES if self.path == BLIND else self.server.engine.params.serve.max_body_bytes
            raw = self.read_body(limit)
            try:
                body = json.loads(raw or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RequestError(400, "The request body is not valid JSON.") from None
            if self.path == BLIND:
                return self.blind_answer(body)
            engine = self.server.engine
            request = engine.fit(parse_completion(body, engine.params, engine.models))
            ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            self.server.engine.run(
                request, (self.stream_reply if request.stream else self.whole_reply)(request, ident, created)
            )
        except RequestError as err:
            self.send_json(err.status, err.body())
        except (ClientGone, TimeoutError, ConnectionError) as err:
            self.close_connection = True
            log.info("%s went away (%s); its request was dropped", self.address_string(), type(err).__name__)
        except Exception:  # noqa: BLE001 - a server answers every request; the traceback goes to the log
            log.exception("request failed")
            error = RequestError(500, "Internal error while generating.", kind="server_error").body()
            if getattr(self, "streaming", False):  # headers already sent: end the stream with an error event
                self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())
            else:
                self.send_json(500, error)

    def blind_answer(self, body: object) -> None:
        """Store one answer of the blind test (`{"token", "choice"}`) and send the next pair."""
        if not isinstance(body, dict):
            raise RequestError(400, 'Send {"token": ..., "choice": "A" or "B"}.')
        try:
            self.server.blind.answer(body.get("token"), body.get("choice"))
        except ValueError as err:
            raise RequestError(409 if body.get("choice") in ("A", "B") else 400, str(err)) from None
        self.send_json(200, self.server.blind.state())

    def read_body(self, limit: int) -> bytes:
        """The body, never more than `limit` bytes: the declared length is checked before anything is read.

        A missing, negative or non-numeric Content-Length is refused (a negative one used to mean "read until the
        connection closes", which let any size through); the connection is closed after a refusal, since the unread
        body would otherwise be taken for the next request.
        """
        declared = self.headers.get("Content-Length")
        digits = (declared or "").strip()
        length = int(digits) if digits.isascii() and digits.isdigit() else None
        problem = None
        if declared is None or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            problem = RequestError(411, "Send the body with a Content-Length header.")
        elif length is None:
            problem = RequestError(400, f"Content-Length must be a number of bytes, got {declared[:40]!r}.")
        elif length > limit:
            problem = RequestError(413, f"The request body is {length} bytes; the limit is {limit}.")
        if problem:
            self.close_connection = True
            raise problem
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise ClientGone("the body ended before its Content-Length")
        return raw

    def whole_reply(self, request: Completion, ident: str, created: int):
        def consume(stream: ReplyStream) -> None:
            for _ in stream:
                pass
            self.send_json(200, completion_body(request, stream, ident, created))

        return consume

    def stream_reply(self, request: Completion, ident: str, created: int):
        def consume(stream: ReplyStream) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = self.streaming = True
            self.wfile.write(chunk(request, ident, created, {"role": "assistant", "content": ""}))
            with contextlib.closing(iter(stream)) as pieces:  # a write that fails stops the generation at once
                for piece in pieces:
                    self.wfile.write(chunk(request, ident, created, {"content": piece}))
                    self.wfile.flush()
            self.wfile.write(chunk(request, ident, created, {}, stream.finish_reason))
            self.wfile.write(b"data: [DONE]\n\n")

        return consume


class ServeServer(ThreadingHTTPServer):
    """A thread per request; every handler reads the one engine (model lock, queue) and the API key from here."""

    daemon_threads = True
    request_queue_size = 128  # connections the kernel holds before accept; the default 5 resets bursts of clients

    def __init__(self, address: tuple[str, int], engine: Engine, api_key: str | None):
        super().__init__(address, CompletionHandler)
        self.engine, self.api_key = engine, api_key
        self.blind = BlindTest()


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
    engine = Engine(model, tokenizer, params)
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
