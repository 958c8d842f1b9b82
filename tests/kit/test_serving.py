"""How `leadmarket serve` runs uvicorn: one write per response, over a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from leadmarket.kit.serving import _CoalescingTransport, listening_socket, server_options


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


async def test_the_writes_of_one_loop_step_go_out_as_one_in_order() -> None:
    real = _RecordingTransport()
    transport = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.writelines([b"a", b"b"])
    transport.write(b"c")
    transport.close()  # what is pending goes out before the connection closes
    assert real.writes[1:] == [b"abc"] and real.closed
    await asyncio.sleep(0)
    assert len(real.writes) == 2
    assert transport.get_extra_info("peername") == "extra peername"


async def test_a_write_to_a_connection_that_went_away_is_dropped() -> None:
    real = _RecordingTransport()
    transport = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"late")
    real.closed = True  # the peer went away before the loop came round
    await asyncio.sleep(0)
    assert real.writes == []


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    answer = b"echo " + body
    headers = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return answer


async def test_served_answers_are_whole_in_order_and_streams_still_stream() -> None:
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    options: dict[str, Any] = server_options(proxy_headers=False)
    options["loop"] = "none"  # the test's own event loop
    server = uvicorn.Server(uvicorn.Config(_app, **options))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn's Server has a flag, no event
            await asyncio.sleep(0.01)
        pipelined = (
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nxy"
        )
        answer = await _exchange(port, pipelined)
        heads_and_bodies = answer.split(b"HTTP/1.1 200 OK\r\n")[1:]
        assert [part.rsplit(b"\r\n\r\n", 1)[1] for part in heads_and_bodies] == [
            b"echo abc",
            b"echo ",
            b"echo xy",
        ]
        head = heads_and_bodies[0].lower()
        assert b"date: " in head and b"server:" not in head
        streamed = await _exchange(
            port, b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert b"transfer-encoding: chunked" in streamed.lower()
        assert streamed.endswith(b"4\r\none \r\n4\r\ntwo \r\n5\r\nthree\r\n0\r\n\r\n")
    finally:
        server.should_exit = True
        await serving
