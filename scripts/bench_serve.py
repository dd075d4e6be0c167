"""Serving benchmark: `python -m tfsft.serve` (REST, TF Serving's API) against a direct in-process call.

    python scripts/bench_serve.py                              # builds a MiniLM sentiment export first (~2 min)
    python scripts/bench_serve.py --model saved_models/sentiment --requests 10000

For concurrency 1, 8 and 32 it sends one raw tweet per request and prints, side by side, p50/p99 latency and
throughput of
  * in-process: `tf.saved_model.load(...).signatures["serving_default"]` called from N threads, and
  * endpoint:   N concurrent keep-alive HTTP clients (plain sockets in threads; `--client aiohttp` for
                aiohttp's) POSTing `{"instances": ["..."]}` to the local server
    (once without and once with `--batching`),
with the ratios endpoint / in-process; then, at concurrency 1, a paired run where in-process calls and endpoint
requests alternate, so both see the same moment of the machine (its drift cancels out of that ratio). Client and
server share this machine's cores, so the endpoint figures include the client's own cost. Nothing is asserted: the
numbers are printed for a human (and the closing note).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tfsft.versions import latest_version_dir

REPO = Path(__file__).resolve().parents[1]
TEXTS_CSV = REPO / "tfsft" / "demo_data" / "tweets" / "test.csv"


def load_texts() -> list[str]:
    with TEXTS_CSV.open(encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def build_demo_export(workdir: Path) -> Path:
    """A short MiniLM fine-tune of the quickstart, exported: the same graph a real sentiment model has."""
    runs = workdir / "runs"
    command = [
        sys.executable,
        "-m",
        "tfsft.train",
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--set",
        f"output_dir={runs}",
        "--set",
        "name=bench_serve",
        "--set",
        "training.epochs=1",
        "--set",
        "training.steps_per_epoch=20",
        "--set",
        "training.validation_steps=2",
        "--set",
        "export.enabled=true",
        "--set",
        f"export.base_path={workdir / 'saved_models'}",
        "--set",
        "export.name=sentiment",
        "--resume",
        "never",
    ]
    print("building a demo export:", " ".join(command[2:]), flush=True)
    subprocess.run(
        command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    )
    return workdir / "saved_models" / "sentiment"


def latest_version(model_dir: Path) -> Path:
    latest = latest_version_dir(model_dir)  # the version tfsft.serve and TF Serving serve by default
    if latest is None:
        sys.exit(f"error: '{model_dir}' has no <version>/saved_model.pb folders; pass saved_models/<name>")
    return latest


def summarize(latencies_s: list[float], wall_s: float, errors: int) -> dict:
    ms = np.asarray(latencies_s) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput": len(ms) / wall_s,
        "errors": errors,
        "requests": len(ms) + errors,
    }


# ----------------------------------------------------------------------------------------- in-process
def bench_in_process(signature, texts: list[str], concurrency: int, requests: int) -> dict:
    import tensorflow as tf

    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []

    def worker():
        local = []
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                break
            start = time.perf_counter()
            signature(text=tf.constant([texts[index % len(texts)]]))
            local.append(time.perf_counter() - start)
        with lock:
            latencies.extend(local)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return summarize(latencies, time.perf_counter() - start, 0)


# ----------------------------------------------------------------------------------------- endpoint
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(base_path: Path, port: int, batching: bool, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "tfsft.serve", "--model-base-path", str(base_path), "--port", str(port)]
    if batching:
        command += ["--batching", "--max-batch-size", "32", "--batch-timeout-ms", "2"]
    # The server logs every request: a file, not an unread pipe, which would fill and stall it.
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        )


async def wait_available(url: str, server: subprocess.Popen, log_path: Path, timeout_s: float = 180.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                sys.exit(f"error: the server exited: {log_path.read_text()[-2000:]}")
            try:
                async with session.get(url) as response:
                    body = await response.json()
                    if any(v["state"] == "AVAILABLE" for v in body.get("model_version_status", [])):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    sys.exit(f"error: {url} did not become AVAILABLE in {timeout_s:.0f} s")


async def bench_endpoint(url: str, texts: list[str], concurrency: int, requests: int) -> dict:
    import aiohttp

    counter = iter(range(requests))
    latencies: list[float] = []
    errors = 0

    async def worker(session):
        nonlocal errors
        for index in counter:  # a shared iterator: asyncio runs one worker at a time between awaits
            payload = json.dumps({"instances": [texts[index % len(texts)]]})
            start = time.perf_counter()
            try:
                async with session.post(url, data=payload, headers={"Content-Type": "application/json"}) as resp:
                    body = await resp.json(content_type=None)
                    ok = resp.status == 200 and len(body.get("predictions", [])) == 1
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await worker_warmup(session, url, texts)
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarize(latencies, wall, errors)


def bench_endpoint_sockets(host: str, port: int, path: str, texts: list[str], concurrency: int, requests: int) -> dict:
    """N threads, each a keep-alive HTTP/1.1 connection over a plain socket: a client that costs microseconds,
    so the figure is the endpoint's cost rather than the benchmark client's (aiohttp's client costs ~0.5 ms of
    CPU per request on these cores; `--client aiohttp` uses it instead)."""
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0

    def worker():
        nonlocal errors
        local, failed = [], 0
        with socket.create_connection((host, port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = sock.makefile("rb")
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    break
                body = json.dumps({"instances": [texts[index % len(texts)]]}).encode()
                request = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode() + body
                start = time.perf_counter()
                sock.sendall(request)
                status = reader.readline().split()
                length = 0
                while True:
                    line = reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                payload = reader.read(length)
                ok = len(status) > 1 and status[1] == b"200" and len(json.loads(payload)["predictions"]) == 1
                if ok:
                    local.append(time.perf_counter() - start)
                else:
                    failed += 1
        with lock:
            latencies.extend(local)
            errors += failed

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return summarize(latencies, time.perf_counter() - start, errors)


def bench_paired(signature, host: str, port: int, path: str, texts: list[str], requests: int) -> dict:
    """Concurrency 1, in-process call and endpoint request alternating on the same texts: both see the same
    moment of this machine, so its drift (other tenants, frequency changes) cancels out of the ratio."""
    import tensorflow as tf

    direct, endpoint = [], []
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        for index in range(requests):
            text = texts[index % len(texts)]
            start = time.perf_counter()
            {k: v.numpy() for k, v in signature(text=tf.constant([text])).items()}
            direct.append(time.perf_counter() - start)
            body = json.dumps({"instances": [text]}).encode()
            start = time.perf_counter()
            sock.sendall(
                (
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            reader.readline()
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            json.loads(reader.read(length))
            endpoint.append(time.perf_counter() - start)
    return {"in_process_p50_ms": float(np.median(direct)) * 1000, "endpoint_p50_ms": float(np.median(endpoint)) * 1000}


async def worker_warmup(session, url: str, texts: list[str]) -> None:
    for text in texts[:20]:
        async with session.post(url, json={"instances": [text]}) as response:
            await response.read()


# ----------------------------------------------------------------------------------------- report
def row(label: str, concurrency: int, stats: dict, reference: dict | None) -> str:
    ratio = ""
    if reference:
        ratio = (
            f"  p50 x{stats['p50_ms'] / reference['p50_ms']:.2f}  "
            f"throughput x{stats['throughput'] / reference['throughput']:.2f}"
        )
    return (
        f"{label:<20} {concurrency:>4} {stats['requests']:>8} {stats['p50_ms']:>9.2f} {stats['p99_ms']:>9.2f} "
        f"{stats['throughput']:>10.1f} {stats['errors']:>7}{ratio}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="saved_models/<name> (default: build a short MiniLM export)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=10_000, help="requests at the highest concurrency")
    parser.add_argument("--requests-low", type=int, default=1_000, help="requests at the other concurrencies")
    parser.add_argument("--no-batching-run", action="store_true", help="skip the endpoint run with --batching")
    parser.add_argument(
        "--client",
        choices=("sockets", "aiohttp"),
        default="sockets",
        help="HTTP client: keep-alive sockets in threads (default, lightest) or aiohttp",
    )
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as workdir:  # the demo run and export, removed at the end
        run_benchmark(args, Path(workdir))


def run_benchmark(args, workdir: Path) -> None:
    model_dir = args.model.resolve() if args.model else build_demo_export(workdir)
    version = latest_version(model_dir)
    texts = load_texts()

    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (the tokenizer's ops)

    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    for text in texts[:20]:
        signature(text=tf.constant([text]))

    def count(concurrency):
        return args.requests if concurrency == max(args.concurrency) else args.requests_low

    results: dict[tuple[str, int], dict] = {}
    for concurrency in args.concurrency:
        results["in-process", concurrency] = bench_in_process(signature, texts, concurrency, count(concurrency))
        print(f"in-process c={concurrency}: {results['in-process', concurrency]}", flush=True)

    modes = [("endpoint", False)] + ([] if args.no_batching_run else [("endpoint+batching", True)])
    for label, batching in modes:
        port = free_port()
        log_path = workdir / f"{label}.log"
        server = start_server(model_dir.parent, port, batching, log_path)
        base_url = f"http://127.0.0.1:{port}/v1/models/{model_dir.name}"
        try:
            asyncio.run(wait_available(base_url, server, log_path))
            if label == "endpoint":
                paired = bench_paired(
                    signature, "127.0.0.1", port, f"/v1/models/{model_dir.name}:predict", texts, args.requests_low
                )
                print(f"paired c=1: {paired}", flush=True)
            for concurrency in args.concurrency:
                if args.client == "aiohttp":
                    stats = asyncio.run(bench_endpoint(base_url + ":predict", texts, concurrency, count(concurrency)))
                else:
                    stats = bench_endpoint_sockets(
                        "127.0.0.1",
                        port,
                        f"/v1/models/{model_dir.name}:predict",
                        texts,
                        concurrency,
                        count(concurrency),
                    )
                results[label, concurrency] = stats
                print(f"{label} c={concurrency}: {stats}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)

    from tfsft.runtime import cpu_info, tensorflow_build

    print(f"\nCPU: {cpu_info().describe()}; {tensorflow_build()}")
    print(f"model: {version}  ({os.cpu_count()} CPUs; client and server share them)")
    print(
        f"{'':<20} {'conc':>4} {'requests':>8} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>10} {'errors':>7}  "
        "ratio vs in-process"
    )
    for concurrency in args.concurrency:
        reference = results["in-process", concurrency]
        print(row("in-process", concurrency, reference, None))
        for label, _ in modes:
            print(row(label, concurrency, results[label, concurrency], reference))
    one = args.concurrency[0]
    overhead = results["endpoint", one]["p50_ms"] / results["in-process", one]["p50_ms"] - 1
    top = max(args.concurrency)
    errors = sum(results[label, top]["errors"] for label, _ in modes)
    print(f"\np50 overhead of the endpoint at concurrency {one}: {overhead * 100:+.1f} %  (target <= +10 %)")
    paired_overhead = paired["endpoint_p50_ms"] / paired["in_process_p50_ms"] - 1
    print(
        f"p50 overhead, paired (in-process and endpoint calls alternating, {args.requests_low} each): "
        f"{paired['in_process_p50_ms']:.2f} ms vs {paired['endpoint_p50_ms']:.2f} ms = {paired_overhead * 100:+.1f} %"
    )
    print(
        f"errors at concurrency {top}: {errors} over {sum(results[label, top]['requests'] for label, _ in modes)} "
        f"requests (target 0)"
    )


if __name__ == "__main__":
    main()
