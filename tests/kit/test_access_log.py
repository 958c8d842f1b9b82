"""The access line of each HTTP request: the same line as the logging module's standard path
would write, without personal data, written by the end of the loop step that made it (and at
exit), and only where the logging configuration sends an INFO record of ``leadmarket.access``."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import httpx
import pytest

from leadmarket.kit.logs import (
    AccessLog,
    JsonFormatter,
    StreamLogHandler,
    TextFormatter,
    configure_logging,
)

ACCESS = "leadmarket.access"
KEYS = ["at", "level", "logger", "event", "request_id", "method", "route", "status", "duration_ms"]


class _CountingStream(io.StringIO):
    """A stream that remembers each write (the handler's lines of one loop step: one write)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[_CountingStream]:
    """A stream for :func:`configure` to send the logs to; the logging setup is put back."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    access = logging.getLogger(ACCESS)
    saved_access = (access.level, access.handlers[:], access.filters[:], access.propagate)
    out = _CountingStream()
    try:
        yield out
    finally:
        logging.disable(logging.NOTSET)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        access.setLevel(saved_access[0])
        access.handlers[:], access.filters[:], access.propagate = saved_access[1:]


def configure(stream: io.StringIO, fmt: str = "json") -> AccessLog:
    """configure_logging, its handler writing to ``stream`` instead of stderr (called in the
    test itself: pytest adds its own capturing handlers to the root logger's when a test starts,
    and configure_logging replaces them), and the access log."""
    configure_logging("INFO", fmt)
    handler = logging.getLogger().handlers[0]
    assert type(handler) is StreamLogHandler
    handler.setStream(stream)
    return AccessLog(ACCESS)


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def _write(access: AccessLog, route: str = "/api/v1/ping") -> None:
    access.write("req_01JD8ZQ3V4K7X9M2N5P8R1T6W0", "POST", route, 200, 0.42)


# The line is the standard path's line -----------------------------------------------------------


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_line_is_what_the_formatter_makes_of_the_record(
    formatter: JsonFormatter | TextFormatter, seed: int
) -> None:
    rng = random.Random(seed)
    alphabet = "0123456789      ()+-.ax@_'\"\\/{}é"
    access = AccessLog(ACCESS)

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))

    for n in range(3000):
        request_id = rng.choice(["req_01JD8ZQ3V4K7X9M2N5P8R1T6W0", "req_" + text(), text()])
        method = rng.choice(["GET", "POST", None, text()])
        route = rng.choice(["/api/v1/ping", "/forms/{slug}", "(unmatched)", text()])
        status = rng.choice([200, 201, 404, 500])
        duration_ms = rng.choice([0.0, 0.42, 12.5, round(rng.uniform(0, 9999), 2)])
        # Whole seconds too: isoformat writes no fraction then.
        micros = rng.randint(1_700_000_000, 1_900_000_000) * 1_000_000
        micros += 0 if n % 10 == 0 else rng.choice([1, 999_999, rng.randint(0, 999_999)])
        fields = (request_id, method, route, status, duration_ms)
        record = access.record(fields)
        record.created = micros / 1e6
        expected = formatter.format(record)
        assert formatter.access_line(micros, ACCESS, fields) == expected, fields
    if isinstance(formatter, JsonFormatter):
        assert list(json.loads(expected)) == KEYS


def test_personal_data_in_a_value_is_masked() -> None:
    fields = ("ana@example.com", "+1 415 555 0123", "/x/(415) 555-0123", 200, 1.0)
    line = JsonFormatter().access_line(1_763_800_000_000_001, ACCESS, fields)
    assert "ana@" not in line and "555" not in line
    entry = json.loads(line)
    assert (entry["request_id"], entry["method"], entry["route"]) == (
        "[email]",
        "[phone]",
        "/x/[phone]",
    )
    assert entry["at"] == "2025-11-22T08:26:40.000001+00:00"


# Through the application ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_each_request_writes_one_line_with_its_route_template(
    stream: _CountingStream, client: httpx.AsyncClient, fmt: str
) -> None:
    configure(stream, fmt)
    answers = [
        await client.get("/problems/reauth-required?token=secret-in-query"),
        await client.post("/api/v1/ping?token=secret-in-query", json={}),
        await client.get("/api/v1/le%00ads"),
        await client.get("/healthz"),
    ]
    await asyncio.sleep(0)
    lines = [line for line in _lines(stream) if ACCESS in line]
    assert not any("secret-in-query" in line for line in lines)  # (httpx logs its own URLs)
    expected = [
        ("GET", "/problems/{slug}", 200),
        ("POST", "/api/v1/ping", 401),
        ("GET", "(unmatched)", 400),
        ("GET", "/healthz", 200),
    ]
    ids = [answer.headers["x-request-id"] for answer in answers]
    if fmt == "text":
        for line, request_id, (method, route, status) in zip(lines, ids, expected, strict=True):
            assert line.startswith(f"INFO    {ACCESS}: request request_id={request_id} ")
            assert f" method={method} route={route} status={status} duration_ms=" in line
        return
    entries = [json.loads(line) for line in lines]
    assert [list(entry) for entry in entries] == [KEYS] * 4
    assert [(e["method"], e["route"], e["status"]) for e in entries] == expected
    assert [e["request_id"] for e in entries] == ids
    for entry in entries:
        assert (entry["level"], entry["logger"], entry["event"]) == ("info", ACCESS, "request")
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
        at = dt.datetime.fromisoformat(entry["at"])
        assert at.utcoffset() == dt.timedelta(0)
        assert abs(dt.datetime.now(dt.UTC) - at) < dt.timedelta(minutes=1)


async def test_the_lines_of_one_loop_step_go_out_in_one_write_in_order(
    stream: _CountingStream,
) -> None:
    access = configure(stream)
    for route in ("/a", "/b", "/c"):
        _write(access, route)
    await asyncio.sleep(0)
    assert len(stream.writes) == 1
    assert [json.loads(line)["route"] for line in _lines(stream)] == ["/a", "/b", "/c"]
    # A record the handler emits goes out after the lines written before it.
    _write(access, "/d")
    logging.getLogger("leadmarket.other").warning("after")
    assert [json.loads(line)["event"] for line in _lines(stream)][3:] == ["request", "after"]


def test_without_an_event_loop_a_line_is_written_at_once(
    stream: _CountingStream,
) -> None:
    access = configure(stream)
    _write(access)
    assert len(_lines(stream)) == 1


async def test_a_line_left_by_a_loop_that_stopped_goes_out_with_the_next(
    stream: _CountingStream,
) -> None:
    access = configure(stream)

    # Another loop, in another thread, stops before the step that would have written its line.
    def other_loop() -> None:
        loop = asyncio.new_event_loop()

        def last_step() -> None:
            _write(access, "/stopped")
            loop.stop()

        loop.call_soon(last_step)
        loop.run_forever()
        loop.close()

    await asyncio.to_thread(other_loop)
    _write(access, "/here")
    await asyncio.sleep(0)
    assert [json.loads(line)["route"] for line in _lines(stream)] == ["/stopped", "/here"]


def test_a_line_still_waiting_at_exit_is_written() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from leadmarket.kit.logs import AccessLog, configure_logging

        configure_logging("INFO", "json")

        def last_request():
            AccessLog("leadmarket.access").write("req_1", "GET", "/healthz", 200, 0.1)
            sys.exit(0)  # the loop never takes another step

        loop = asyncio.new_event_loop()
        loop.call_soon(last_request)
        loop.run_forever()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(e["request_id"], e["route"]) for e in entries] == [("req_1", "/healthz")]


# The logging configuration decides --------------------------------------------------------------


async def test_levels_and_disable_are_respected(stream: _CountingStream) -> None:
    access = configure(stream)

    def silenced() -> None:
        logging.getLogger(ACCESS).setLevel(logging.WARNING)

    def handler_above_info() -> None:
        logging.getLogger().handlers[0].setLevel(logging.WARNING)

    def root_above_info() -> None:
        logging.getLogger().setLevel(logging.WARNING)

    def disabled() -> None:
        logging.disable(logging.INFO)

    for change in (silenced, handler_above_info, root_above_info, disabled):
        change()
        _write(access)
        await asyncio.sleep(0)
        assert _lines(stream) == [], change.__name__
        configure(stream)
        logging.getLogger(ACCESS).setLevel(logging.NOTSET)
        logging.disable(logging.NOTSET)
    _write(access)
    await asyncio.sleep(0)
    assert len(_lines(stream)) == 1


async def test_another_handler_or_a_filter_gets_the_standard_path(
    stream: _CountingStream,
) -> None:
    access = configure(stream)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    # Another handler, on the way up or next to configure_logging's: both get the line.
    for name in ("leadmarket", ""):
        logging.getLogger(name).addHandler(extra := Keep())
        try:
            _write(access, f"/both/{name}")
            await asyncio.sleep(0)
        finally:
            logging.getLogger(name).removeHandler(extra)
    assert [r.route for r in records] == ["/both/leadmarket", "/both/"]  # type: ignore[attr-defined]
    assert [json.loads(line)["route"] for line in _lines(stream)] == [
        "/both/leadmarket",
        "/both/",
    ]

    logging.getLogger(ACCESS).addFilter(lambda record: record.route != "/dropped")  # type: ignore[attr-defined]
    _write(access, "/dropped")
    _write(access, "/kept")
    await asyncio.sleep(0)
    assert [json.loads(line)["route"] for line in _lines(stream)][2:] == ["/kept"]
    logging.getLogger(ACCESS).filters.clear()

    # Not propagated to the root, and no handler of its own: no line (lastResort is for
    # warnings).
    logging.getLogger(ACCESS).propagate = False
    _write(access, "/nowhere")
    await asyncio.sleep(0)
    assert len(_lines(stream)) == 3
    logging.getLogger(ACCESS).propagate = True

    # A formatter of one's own formats the record (a subclass may change the line).
    class Shouting(JsonFormatter):
        def format(self, record: logging.LogRecord) -> str:
            return super().format(record).upper()

    logging.getLogger().handlers[0].setFormatter(Shouting())
    _write(access, "/loud")
    await asyncio.sleep(0)
    assert _lines(stream)[-1].startswith('{"AT": ')
