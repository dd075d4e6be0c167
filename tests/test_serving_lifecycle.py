"""A real server on 127.0.0.1: work for clients that went away is dropped, and SIGTERM/SIGINT drain for a
bounded grace period, then exit. Every wait here is bounded; the servers stop by themselves.

The `slow` model (tests/servables.py) sleeps for the seconds it is sent without using a CPU, so a
request can hold a worker for a known time.
"""

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from aiohttp import web

from conftest import REPO
from tfsft.serving import make_app


# ----------------------------------------------------------------------------------------- in-process server
@contextlib.asynccontextmanager
async def listening(app):
    """The app on a real socket, with handler cancellation on as `python -m tfsft.serve` runs it."""
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def send_predict(port: int, seconds: float):
    """Open a connection and send a predict request for the slow model; returns the stream pair."""
    body = json.dumps({"instances": [seconds]}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/models/slow:predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    await writer.drain()
    return reader, writer


async def answer(reader, writer, timeout: float = 30) -> tuple[int, dict]:
    raw = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture
def recorded_slow_calls(serving_registry):
    """Every `seconds` batch the slow model is called with, in order (the servable is restored afterwards)."""
    servable = serving_registry.get("slow")
    original = servable.signatures["serving_default"]
    calls = []

    def recording(**inputs):
        calls.append(inputs["seconds"].numpy().tolist())
        return original(**inputs)

    servable.signatures["serving_default"] = recording
    yield calls
    servable.signatures["serving_default"] = original


@pytest.mark.parametrize("batching", [None, {"max_batch_size": 64, "timeout_ms": 1000}], ids=["direct", "batching"])
def test_work_of_a_client_that_disconnected_is_never_computed(serving_registry, recorded_slow_calls, batching):
    async def go():
        async with listening(make_app(serving_registry, workers=1, batching=batching)) as port:
            busy = await send_predict(port, 1.0)  # holds the only worker (or the batch) for a second
            await asyncio.sleep(0.1)
            gone = await send_predict(port, 3.0)
            await asyncio.sleep(0.1)
            gone[1].close()  # this client gives up while its request is still queued
            await asyncio.sleep(0.05)
            after = await send_predict(port, 0.0)
            return await answer(*busy), await answer(*after)

    started = time.monotonic()
    (busy_status, busy_body), (after_status, after_body) = asyncio.run(go())
    assert (busy_status, after_status) == (200, 200)
    assert busy_body == {"predictions": [1.0]} and after_body == {"predictions": [0.0]}
    assert [3.0] not in recorded_slow_calls and 3.0 not in sum(recorded_slow_calls, [])
    assert time.monotonic() - started < 3.9  # 1 s + the abandoned 3 s call would take 4 s


# ----------------------------------------------------------------------------------------- the real CLI
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(base, port: int, grace: float, log_path):
    command = [
        sys.executable,
        "-m",
        "tfsft.serve",
        "--model-base-path",
        str(base),
        "--port",
        str(port),
        "--poll-seconds",
        "0",
        "--shutdown-grace-seconds",
        str(grace),
    ]
    log = open(log_path, "w")
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    return process


def wait_ready(process, port: int, log_path, deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited early:\n{log_path.read_text()[-3000:]}"
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/slow", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"the server did not answer within {deadline_s} s:\n{log_path.read_text()[-3000:]}")


def predict_in_thread(port: int, seconds: float) -> dict:
    """POST in a background thread; the returned dict gets 'status'/'body' or 'error' when it ends."""
    result: dict = {}

    def run():
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/slow:predict",
            data=json.dumps({"instances": [seconds]}).encode(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                result.update(status=response.status, body=json.loads(response.read()))
        except (OSError, urllib.error.HTTPError) as exc:
            result.update(error=repr(exc))

    result["thread"] = threading.Thread(target=run, daemon=True)
    result["thread"].start()
    return result


@pytest.fixture(scope="module")
def two_servers(serving_base, tmp_path_factory):
    """Two `python -m tfsft.serve` processes on the slow model, started together so their start-ups overlap."""
    root = tmp_path_factory.mktemp("lifecycle")
    shutil.copytree(serving_base / "slow", root / "models" / "slow")
    servers = {}
    for name, grace in (("drains", 30.0), ("bounded", 1.0)):
        port, log_path = free_port(), root / f"{name}.log"
        servers[name] = (start_server(root / "models", port, grace, log_path), port, log_path)
    try:
        for process, port, log_path in servers.values():
            wait_ready(process, port, log_path)
        yield servers
    finally:
        for process, _, _ in servers.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


def stop(process, sig) -> float:
    """Send `sig`; seconds until the process exited (it is killed after 30 s)."""
    started = time.monotonic()
    process.send_signal(sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
    return time.monotonic() - started


def test_sigterm_lets_the_request_in_flight_finish_then_exits(two_servers):
    process, port, log_path = two_servers["drains"]
    request = predict_in_thread(port, 3.0)
    time.sleep(1.0)  # the request is inside the model now
    took = stop(process, signal.SIGTERM)
    request["thread"].join(timeout=30)
    assert process.returncode == 0, log_path.read_text()[-3000:]
    assert request.get("status") == 200 and request["body"] == {"predictions": [3.0]}, request
    assert 1.5 < took < 20.0  # waited for the 3 s call to finish, not for the whole 30 s grace period
    assert "Traceback" not in log_path.read_text()


def test_sigint_exits_after_the_grace_period_even_if_a_call_is_still_running(two_servers):
    process, port, log_path = two_servers["bounded"]
    request = predict_in_thread(port, 60.0)
    time.sleep(1.0)
    took = stop(process, signal.SIGINT)
    request["thread"].join(timeout=30)
    assert process.returncode == 0, log_path.read_text()[-3000:]
    assert took < 10.0  # 1 s of grace (and the exit), not the 60 s the call would take
    assert "status" not in request or request["status"] != 200  # the client got no answer, not a hang
    text = log_path.read_text()
    assert "abandoned" in text and "Traceback" not in text
