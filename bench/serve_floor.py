"""The benchmark's floor: the least an HTTP server on this machine can do per /predict request.

A bare ASGI app, served by the same uvicorn as the service and the peer, that reads the
body, parses the JSON and answers a fixed body: what HTTP and parsing alone cost, so the
service's throughput is read against what the host allows. Run by bench/serve.py:
``uvicorn bench.serve_floor:app``."""

from __future__ import annotations

try:
    from orjson import loads
except ImportError:  # the service parses with orjson when present; the floor must not be slower
    from json import loads

ANSWER = b'{"label":"skip","confidence":0.5}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if body:
        loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
