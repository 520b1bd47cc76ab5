"""Load on onnx-serve over loopback, beside the folder run and a tutorial service, in one run.

    python benchmarks/serve_load.py --dir ../shared/data/flowers/train --model m.onnx --model m.int8.onnx \
        [--limit 1000] [--seconds 20] [--overload-seconds 30] [--format json]

Per model, on the first --limit images of --dir (sorted), all held in memory and posted as raw
bodies round-robin by an asyncio client in this process (keep-alive connections to 127.0.0.1 only;
every phase is bounded by --seconds and --max-requests):
  (a) `onnx-predict` on the same images as a folder: end-to-end img/s and peak RSS (the ceiling);
  (b) a tutorial service written here (Starlette + uvicorn + onnxruntime, session made once,
      `Image.open` + numpy per request in an async handler, no batching): 16 clients, closed loop;
  (c) `onnx-serve --max-batch 1`: 16 clients, closed loop;
  then `onnx-serve` as given (defaults): start to ready, idle RSS, 16 clients closed loop
  (img/s, p50/p90/p99, batch sizes from /metrics), one client, an open loop at half the 16-client
  rate, 4x that rate for --overload-seconds (every answer 200 or 503? peak RSS) and the recovery
  (16 clients right after: time until a 0.25 s window of answers, the overload's tail included,
  reaches 90% of the normal rate). In-process
  `Predictor` latency for one image and the CLI's one-image cold start come from the same run.
Prints one markdown table per model, the targets beside the figures (or --format json), and the
CPU this generator used itself: it shares the cores with the server it loads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstats import run_measured  # noqa: E402

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"  # loopback only, always
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CLIENTS = 16
RECOVERY_WINDOW_S = 0.25
REQUEST_TIMEOUT_S = 30.0
MAX_OPEN_CONNECTIONS = 512  # open-loop phases: past it a request waits for a free connection


class Conn:
    """One keep-alive HTTP/1.1 connection posting raw bodies (the load generator's client)."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Conn":
        return cls(*await asyncio.open_connection(HOST, port))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/octet-stream\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        data = await self.reader.readexactly(int(found.group(1))) if found else b""
        if re.search(rb"(?i)\r\nconnection: *close", head):
            self.writer.close()
            self.writer = None
        return int(head[9:12]), data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Load:
    """Records (finish time, latency, status) of every request of a phase."""

    def __init__(self, port: int, images: list[bytes], path: str) -> None:
        self.port, self.images, self.path = port, images, path
        self.records: list[tuple[float, float, int]] = []
        self.next = 0
        self.schedule_end = 0.0

    def body(self) -> bytes:
        self.next += 1
        return self.images[self.next % len(self.images)]

    async def one(self, conn: Conn | None, sent: float) -> Conn | None:
        body = self.body()
        reused = conn is not None and conn.writer is not None
        try:
            if not reused:
                conn = await Conn.open(self.port)
            try:
                status, _ = await asyncio.wait_for(conn.post(self.path, body), REQUEST_TIMEOUT_S)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                # A pooled connection the server closed while it sat idle (keep-alive timeout):
                # nothing came back, so the request never reached it. HTTP clients (urllib3,
                # aiohttp) send such a request again once on a fresh connection; so does this one.
                if not reused or getattr(exc, "partial", b""):
                    raise
                conn.close()
                conn = await Conn.open(self.port)
                status, _ = await asyncio.wait_for(conn.post(self.path, body), REQUEST_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            status, conn = 0, None  # no answer
        now = time.perf_counter()
        self.records.append((now, now - sent, status))
        return conn

    async def closed(self, clients: int, seconds: float, limit: int) -> None:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            conn = None
            while time.perf_counter() < deadline and len(self.records) < limit:
                conn = await self.one(conn, time.perf_counter())
            if conn is not None:
                conn.close()

        await asyncio.gather(*(client() for _ in range(clients)))

    async def open_loop(self, rate: float, seconds: float, limit: int, after=None) -> None:
        """Requests sent on a fixed schedule, latency counted from the scheduled time; `after`
        (a coroutine function) starts as soon as the schedule ends."""
        idle: list[Conn] = []
        slots = asyncio.Semaphore(MAX_OPEN_CONNECTIONS)

        async def scheduled(at: float) -> None:
            async with slots:
                conn = await self.one(idle.pop() if idle else None, at)
                if conn is not None:
                    idle.append(conn)

        tasks, start = [], time.perf_counter()
        for i in range(min(limit, int(rate * seconds))):
            at = start + i / rate
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            tasks.append(asyncio.ensure_future(scheduled(at)))
        self.schedule_end = time.perf_counter()
        recovery = asyncio.ensure_future(after()) if after else None
        await asyncio.gather(*tasks)
        if recovery:
            await recovery
        for conn in idle:
            conn.close()

    def summary(self) -> dict:
        if not self.records:
            return {"requests": 0}
        ok = sorted(lat for _, lat, status in self.records if status == 200)
        span = max(t for t, _, _ in self.records) - min(t - lat for t, lat, _ in self.records)
        q = (lambda p: 1000 * ok[min(len(ok) - 1, int(p * len(ok)))]) if ok else (lambda p: float("nan"))
        return {"requests": len(self.records), "ok": len(ok), "img_s": len(ok) / span,
                "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
                "status": {str(s): sum(1 for _, _, st in self.records if st == s)
                           for s in sorted({st for _, _, st in self.records})}}


class Rss:
    """Peak VmRSS of a process, sampled every 20 ms between start() and stop()."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def now(self) -> float:
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0.0
        return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024

    def __enter__(self) -> "Rss":
        self.peak, self._stop = self.now(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(proc: subprocess.Popen, port_of, timeout: float = 120) -> float:
    """Seconds from now until GET /readyz (or /healthz) answers 200."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        port = port_of()
        if port:
            try:
                if get(port, "/readyz")[0] == 200:
                    return time.perf_counter() - start
            except OSError:
                pass
        time.sleep(0.005)
    raise SystemExit("the server did not become ready")


def start_serve(model: Path, log: Path, *args: str) -> tuple[subprocess.Popen, int, float]:
    with open(log, "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([str(BIN / "onnx-serve"), "-m", str(model), "--port", "0", "--no-access-log", *args],
                                stdout=subprocess.DEVNULL, stderr=err)

    def port() -> int | None:
        found = re.search(rb" on http://127\.0\.0\.1:(\d+) ", log.read_bytes())
        return int(found.group(1)) if found else None

    wait_ready(proc, port)
    return proc, port(), time.perf_counter() - start


def start_tutorial(model: Path) -> tuple[subprocess.Popen, int]:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--tutorial-server", str(model), "--port", str(port)])
    wait_ready(proc, lambda: port)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def batch_histogram(port: int) -> dict[str, float]:
    text = get(port, "/metrics")[1].decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'onnx_serve_batch_size_bucket\{le="([^"]+)"\} (\S+)', text)}


def batch_sizes(before: dict, after: dict) -> dict[str, int]:
    """Model calls per batch-size bucket between two /metrics readings (cumulative -> per bucket)."""
    out, below = {}, 0.0
    for le in before:
        total = after[le] - before[le]
        out[f"<={le}"] = int(total - below)
        below = total
    return {k: v for k, v in out.items() if v}


GENERATOR_CPU = [0.0]  # CPU seconds this process spent generating load


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def drive(coroutine) -> None:
    start = cpu_seconds()
    asyncio.run(coroutine)
    GENERATOR_CPU[0] += cpu_seconds() - start


def phase(load: Load, run) -> dict:
    drive(run(load))
    return load.summary()


def measure(model: Path, folder: Path, images: list[bytes], args) -> dict:
    n, secs, limit = len(images), args.seconds, args.max_requests
    result: dict = {"model": model.name, "images": n}
    code, seconds, rss = run_measured([str(BIN / "onnx-predict"), "-m", str(model), "--format", "csv", str(folder)],
                                      timeout=600)
    result["a_folder"] = {"img_s": n / seconds, "peak_rss_mib": rss, "exit": code}
    first = next(p for p in sorted(folder.iterdir()))
    cold = [run_measured([str(BIN / "onnx-predict"), "-m", str(model), str(first)], timeout=120)[1] for _ in range(3)]
    result["cli_cold_start_s"] = statistics.median(cold)
    from alexnet_onnx.runtime import Predictor

    predictor = Predictor(model)
    files = sorted(folder.iterdir())[:50]
    lat = []
    for f in files:
        t = time.perf_counter()
        predictor.predict([f])
        lat.append(time.perf_counter() - t)
    result["predictor_one_image_ms"] = 1000 * statistics.median(lat)
    del predictor

    proc, port = start_tutorial(model)
    try:
        result["b_tutorial"] = phase(Load(port, images, "/predict"), lambda ld: ld.closed(CLIENTS, secs, limit))
    finally:
        stop(proc)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, _ = start_serve(model, Path(tmp, "b1.log"), "--max-batch", "1")
        try:
            result["c_max_batch_1"] = phase(Load(port, images, "/v1/classify"),
                                            lambda ld: ld.closed(CLIENTS, secs, limit))
        finally:
            stop(proc)
        proc, port, ready = start_serve(model, Path(tmp, "serve.log"))
        try:
            result.update(serve_phases(proc, port, images, args))
            result["start_to_ready_s"] = ready
        finally:
            stop(proc)
    return result


def serve_phases(proc: subprocess.Popen, port: int, images: list[bytes], args) -> dict:
    secs, limit, path = args.seconds, args.max_requests, "/v1/classify"
    rss = Rss(proc.pid)
    out = {"idle_rss_mib": rss.now(),
           "idle_peak_rss_mib": int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1)) / 1024}
    before = batch_histogram(port)
    with rss:
        out["closed_16"] = phase(Load(port, images, path), lambda ld: ld.closed(CLIENTS, secs, limit))
    out["closed_16"]["peak_rss_mib"] = rss.peak
    out["closed_16"]["batch_sizes"] = batch_sizes(before, batch_histogram(port))
    out["one_client"] = phase(Load(port, images, path), lambda ld: ld.closed(1, secs, limit))
    full = out["closed_16"]["img_s"]
    out["open_half"] = phase(Load(port, images, path), lambda ld: ld.open_loop(full / 2, secs, limit))
    recovery = Load(port, images, path)
    overload = Load(port, images, path)
    with rss:
        rss.peak = 0.0
        drive(overload.open_loop(4 * full, args.overload_seconds, limit * 10,
                                       after=lambda: recovery.closed(CLIENTS, args.recovery_seconds, limit)))
    out["overload_4x"] = overload.summary()
    out["overload_4x"]["peak_rss_mib"] = rss.peak
    out["overload_4x"]["unanswered"] = sum(1 for _, _, s in overload.records if s not in (200, 503))
    out["recovery_s"] = recovery_time(overload.records + recovery.records, overload.schedule_end, full)
    return out


def recovery_time(records: list, start: float, normal: float) -> float | None:
    """Seconds from `start` (the overload's last request sent) until the images answered in a
    window (the overload's tail and the 16 clients after it alike) reach 90% of `normal`."""
    end = max((t for t, _, _ in records), default=start)
    edge = start
    while edge + RECOVERY_WINDOW_S <= end:
        done = sum(1 for t, _, s in records if s == 200 and edge <= t < edge + RECOVERY_WINDOW_S)
        if done / RECOVERY_WINDOW_S >= 0.9 * normal:
            return edge + RECOVERY_WINDOW_S - start
        edge += RECOVERY_WINDOW_S
    return None


def table(r: dict) -> str:
    a, b, c, s = r["a_folder"]["img_s"], r["b_tutorial"]["img_s"], r["c_max_batch_1"]["img_s"], r["closed_16"]
    one, half, over = r["one_client"], r["open_half"], r["overload_4x"]
    rows = [
        ("16 clients, img/s", f"{s['img_s']:.1f} ({s['img_s'] / a:.0%} of (a), {s['img_s'] / b:.2f}x (b))",
         ">= 90% of (a), >= 2x (b)", s["img_s"] >= 0.9 * a and s["img_s"] >= 2 * b),
        ("(a) onnx-predict folder, img/s", f"{a:.1f}", "ceiling", None),
        ("(b) tutorial service, img/s", f"{b:.1f}", "", None),
        ("(c) onnx-serve --max-batch 1, img/s", f"{c:.1f}", "", None),
        ("16 clients p50 / p90 / p99 ms", f"{s['p50_ms']:.1f} / {s['p90_ms']:.1f} / {s['p99_ms']:.1f}", "", None),
        ("16 clients batch sizes", ", ".join(f"{k}: {v}" for k, v in s["batch_sizes"].items()), "", None),
        ("one client p50 ms", f"{one['p50_ms']:.1f} (Predictor {r['predictor_one_image_ms']:.1f})",
         "<= Predictor + 3", one["p50_ms"] <= r["predictor_one_image_ms"] + 3),
        ("open loop at half, p50 / p99 ms", f"{half['p50_ms']:.1f} / {half['p99_ms']:.1f}", "p99 <= 3x p50",
         half["p99_ms"] <= 3 * half["p50_ms"]),
        ("4x overload: 200 / 503 / unanswered", f"{over['status'].get('200', 0)} / {over['status'].get('503', 0)} / "
         f"{over['unanswered']}", "unanswered = 0", over["unanswered"] == 0),
        ("4x overload peak RSS MiB", f"{over['peak_rss_mib']:.0f} (idle peak {r['idle_peak_rss_mib']:.0f})",
         "<= idle peak + 100", over["peak_rss_mib"] <= r["idle_peak_rss_mib"] + 100),
        ("recovery after overload, s", "none" if r["recovery_s"] is None else f"{r['recovery_s']:.2f}", "<= 2",
         r["recovery_s"] is not None and r["recovery_s"] <= 2),
        ("idle RSS MiB", f"{r['idle_rss_mib']:.0f} (folder run {r['a_folder']['peak_rss_mib']:.0f})",
         "<= folder run + 50", r["idle_rss_mib"] <= r["a_folder"]["peak_rss_mib"] + 50),
        ("start to ready, s", f"{r['start_to_ready_s']:.2f} (CLI cold start {r['cli_cold_start_s']:.2f})",
         "<= CLI + 0.3", r["start_to_ready_s"] <= r["cli_cold_start_s"] + 0.3),
    ]
    lines = [f"### {r['model']} ({r['images']} images)", "", "| what | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {w} | {m} | {t} | {'' if ok is None else ('yes' if ok else 'no')} |" for w, m, t, ok in rows]
    return "\n".join(lines)


def tutorial_server(model: Path, port: int) -> None:
    """What a tutorial's handler does: the session once, then per request PIL + numpy + one run."""
    import io

    import numpy as np
    import onnxruntime as ort
    import uvicorn
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    labels, pre = json.loads(meta["labels"]), json.loads(meta["preprocess"])
    mean = np.array(pre["mean"], np.float32)[:, None, None]
    std = np.array(pre["std"], np.float32)[:, None, None]
    spec = session.get_inputs()[0]
    dtype = np.float16 if spec.type == "tensor(float16)" else np.float32

    async def predict(request):
        image = Image.open(io.BytesIO(await request.body())).convert("RGB")
        w, h = image.size
        scale = pre["resize"] / min(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        left, top = (image.width - pre["crop"]) // 2, (image.height - pre["crop"]) // 2
        image = image.crop((left, top, left + pre["crop"], top + pre["crop"]))
        x = ((np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0 - mean) / std)[None].astype(dtype)
        logits = session.run(None, {spec.name: x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        i = int(p.argmax())
        return JSONResponse({"label": labels[i], "score": float(p[i])})

    async def ready(request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)])
    uvicorn.run(app, host=HOST, port=port, log_level="warning")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="images (recursive, sorted)")
    ap.add_argument("--model", type=Path, action="append", help="repeat for each model")
    ap.add_argument("--limit", type=int, default=1000, help="use the first N images")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each load phase")
    ap.add_argument("--overload-seconds", type=float, default=30.0)
    ap.add_argument("--recovery-seconds", type=float, default=5.0)
    ap.add_argument("--max-requests", type=int, default=20_000, help="at most this many requests per phase")
    ap.add_argument("--format", choices=["markdown", "json"], default="markdown")
    ap.add_argument("--tutorial-server", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.tutorial_server:
        return tutorial_server(args.tutorial_server, args.port)
    if not args.dir or not args.model:
        ap.error("--dir and --model are required")
    files = sorted(p for p in args.dir.rglob("*") if p.suffix.lower() in SUFFIXES)[: args.limit]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "imgs")  # symlinks: the same photos, a folder of exactly N
        folder.mkdir()
        for i, f in enumerate(files):
            os.symlink(f.resolve(), folder / f"{i:06d}{f.suffix.lower()}")
        images = [f.read_bytes() for f in files]
        for model in args.model:
            results.append(measure(model.resolve(), folder, images, args))
    machine = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = re.search(r"Model name:\s+(.*)", machine)
    report = {"cpu": name.group(1) if name else "?", "cores": len(os.sched_getaffinity(0)), "dir": str(args.dir),
              "generator_cpu_s": GENERATOR_CPU[0], "command": " ".join(sys.argv), "results": results}
    if args.format == "json":
        print(json.dumps(report, indent=1))
        return
    print(f"{report['cpu']}, {report['cores']} cores; {report['command']}")
    print(f"(the load generator used {report['generator_cpu_s']:.1f} CPU s of the same cores)\n")
    print("\n\n".join(table(r) for r in results))


if __name__ == "__main__":
    main()
