"""`habla serve` under concurrent streaming clients: time to first token and to the end, p50 and p95, and requests/s.

Measured before and after issue 35's move from the standard library's server to uvicorn (docs/serving.md), on the
project's own models, with 4 and 16 clients each sending `--requests` streaming chat completions.

    python -m benchmarks.serve_latency                 # in a project after `dvc repro` (the demo's models)
    python -m benchmarks.serve_latency --clients 4 16 --requests 8 --max-tokens 32
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from urllib.parse import urlsplit


def stream_once(url: str, max_tokens: int, prompt: str) -> tuple[float, float]:
    """(seconds to the first content chunk, seconds to `[DONE]`) of one streaming chat completion."""
    parts = urlsplit(url)
    body = json.dumps(
        {
            "model": "tuned",
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "max_tokens": max_tokens,
            "temperature": 0,
        }
    ).encode()
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
    try:
        connection.request(
            "POST", "/v1/chat/completions", body, {"Content-Type": "application/json", "Authorization": "Bearer none"}
        )
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
        first = None
        for line in response:
            if first is None and line.startswith(b"data: {") and has_text(line):
                first = time.perf_counter() - started
            if line.strip() == b"data: [DONE]":
                break
        return (first if first is not None else time.perf_counter() - started), time.perf_counter() - started
    finally:
        connection.close()


def has_text(line: bytes) -> bool:
    """Whether an event carries reply text: the opening `{"role": "assistant", "content": ""}` is no token (a server
    may send it as soon as the request is accepted, before the model is free)."""
    choices = json.loads(line.removeprefix(b"data: ")).get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `requests` streaming completions one after the other."""
    first, whole, errors = [], [], []
    lock = threading.Lock()

    def client(index: int) -> None:
        for number in range(requests):
            try:
                ttft, total = stream_once(url, max_tokens, f"hola, ¿cómo estai? ({index}.{number})")
            except (OSError, RuntimeError) as err:
                with lock:
                    errors.append(str(err)[:120])
                continue
            with lock:
                first.append(ttft)
                whole.append(total)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(whole),
        "errors": len(errors),
        "first_token_p50_s": round(statistics.median(first), 3) if first else None,
        "first_token_p95_s": round(percentile(first, 0.95), 3) if first else None,
        "total_p50_s": round(statistics.median(whole), 3) if whole else None,
        "total_p95_s": round(percentile(whole, 0.95), 3) if whole else None,
        "requests_per_second": round(len(whole) / seconds, 2),
    }


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| clients | requests | first token p50 / p95 | whole reply p50 / p95 | requests/s | errors |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['clients']} | {row['requests']} | {row['first_token_p50_s']} / {row['first_token_p95_s']} s | "
            f"{row['total_p50_s']} / {row['total_p95_s']} s | {row['requests_per_second']} | {row['errors']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    import dataclasses

    from habla.apps.serve import Engine, make_server
    from habla.model.loading import load_tuned
    from habla.params import load_params

    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--requests", type=int, default=4, help="streaming completions per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    params = load_params()
    queue = max(args.clients)  # every client waits its turn: the figure is latency under load, not 503s
    params = dataclasses.replace(params, serve=dataclasses.replace(params.serve, port=0, queue_limit=queue))
    model, tokenizer = load_tuned(preferred=True)
    server = make_server(Engine(model, tokenizer, params), params.serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        stream_once(url, 4, "hola")  # warm-up
        rows = [measure(url, clients, args.requests, args.max_tokens) for clients in args.clients]
    finally:
        server.shutdown()
        server.server_close()
    print(json.dumps(rows))
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
