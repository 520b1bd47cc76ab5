"""onnx-serve: a real server process on an ephemeral loopback port, a real HTTP client."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, SHARED_DATA, needs_shared_data, png_header_only, sigint_as_ctrl_c

if find_spec("starlette") is None and not os.environ.get("CI"):  # CI installs it: there, a missing extra fails
    pytest.skip("the serve extra is not installed: pip install '.[serve]'", allow_module_level=True)
pytestmark = pytest.mark.usefixtures("loopback_only")

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 120  # start-up on a loaded 2-core machine
URL_LINE = re.compile(rb" on (http://127\.0\.0\.1:(\d+)) ")


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 120) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def classify(self, data: bytes, name: str = "x", top_k: int = 3, headers: dict | None = None):
        from urllib.parse import quote

        status, head, body = self.request("POST", f"/v1/classify?top_k={top_k}&name={quote(name)}", data, headers)
        return status, head, json.loads(body)

    def metric(self, series: str) -> float:
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        for line in body.decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{series} not in /metrics")

    def wait_metric(self, series: str, want, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric(series)
            if want(value) or time.monotonic() > deadline:
                return value
            time.sleep(0.01)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start(model: Path, folder: Path, *args: str) -> Server:
    log = folder / f"serve-{uuid.uuid4().hex[:8]}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(BIN / "onnx-serve"), "-m", str(model), "--port", "0", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=folder,
                                preexec_fn=sigint_as_ctrl_c)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        found = URL_LINE.search(log.read_bytes())
        if found:
            return Server(proc, int(found.group(2)), log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"onnx-serve did not start: {log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def server(exported_model, tmp_path_factory):
    s = start(exported_model, tmp_path_factory.mktemp("serve"), "--max-body-mb", "1")
    yield s
    s.stop()


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def jpeg(size=(64, 48), seed=0, orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    out = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    im.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def big_jpeg(path: Path) -> bytes:
    """A 6000x4000 photo-sized JPEG: tenths of a second to decode, so images wait in the queue."""
    if not path.exists():
        w, h = 6000, 4000
        x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
        y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
        rgb = np.stack([np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)), np.full((h, w), 99.0)], -1)
        Image.fromarray(rgb.astype(np.uint8)).save(path, quality=85)
    return path.read_bytes()


@pytest.fixture(scope="module")
def corpus(tiny_folder, tmp_path_factory) -> Path:
    """Good photos of several kinds, and files the image policy refuses."""
    root = tmp_path_factory.mktemp("corpus")
    for path in sorted((tiny_folder / "test").rglob("*.png")):
        shutil.copy(path, root / f"{path.parent.name}-{path.name}")
    (root / "rotated.jpg").write_bytes(jpeg(orientation=6))
    (root / "photo.jpg").write_bytes(jpeg((300, 200), seed=3))
    Image.new("L", (40, 30), 90).save(root / "grey.png")
    Image.new("RGBA", (30, 40), (10, 200, 30, 100)).save(root / "alpha.png")
    (root / "text.jpg").write_text("not a photo\n")
    (root / "truncated.png").write_bytes((root / "grey.png").read_bytes()[:60])
    (root / "cut.jpg").write_bytes((root / "photo.jpg").read_bytes()[:3000])
    png_header_only(root / "bomb.png", 20_000, 20_000)
    return root


def cli_rows(model: Path, folder: Path) -> dict[str, str]:
    proc = subprocess.run([str(BIN / "onnx-predict"), "-m", str(model), "--format", "json", "--top-k", "3", str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # the refused files fail, the rest classify
    return {json.loads(line)["path"]: line for line in proc.stdout.splitlines()}


def test_rows_equal_the_cli_bit_for_bit(server, exported_model, corpus):
    """Raw bodies sent 16 at a time (so they share batches): each row is the CLI's line, byte for byte."""
    expected = cli_rows(exported_model, corpus)
    assert len(expected) == 20

    def post(path: str):
        return server.classify(Path(path).read_bytes(), name=path)

    with ThreadPoolExecutor(16) as pool:
        answers = dict(zip(expected, pool.map(post, expected)))
    for path, (status, _, body) in answers.items():
        (row,) = body["rows"]
        assert json.dumps(row) == expected[path], path
        name = Path(path).name
        if name == "text.jpg":
            assert status == 415 and "not an image in a supported format" in body["error"]
        elif name in ("truncated.png", "cut.jpg", "bomb.png"):
            assert status == 422 and body["error"] == row["error"]
        else:
            assert status == 200 and "error" not in row
    assert "decompression bomb" in answers[str(corpus / "bomb.png")][2]["error"]


def test_multipart_answers_one_row_per_file_in_order(server, exported_model, corpus):
    expected = {Path(p).name: json.loads(line) for p, line in cli_rows(exported_model, corpus).items()}
    names = sorted(expected)
    body, headers = multipart([(name, (corpus / name).read_bytes()) for name in names])
    status, _, data = server.request("POST", "/v1/classify?top_k=3", body, headers)
    assert status == 200
    rows = json.loads(data)["rows"]
    assert [row["path"] for row in rows] == names
    for row in rows:
        want = expected[row["path"]]
        if "error" in want:
            assert row["error"] == want["error"].replace(str(corpus) + "/", "")
        else:
            assert (row["label"], row["score"], row["top_k"]) == (want["label"], want["score"], want["top_k"])


def test_bad_requests_get_one_line_and_no_traceback(server):
    for path, body, want in [("/v1/classify", b"", 400), ("/v1/classify?top_k=0", jpeg(), 400),
                             ("/v1/classify?top_k=abc", jpeg(), 400)]:
        status, head, data = server.request("POST", path, body)
        assert status == want and head["content-type"] == "application/json"
        assert "\n" not in json.loads(data)["error"]
    assert server.request("GET", "/v1/classify")[0] == 405
    assert server.request("GET", "/no/such/page")[0] == 404
    assert b"Traceback" not in server.log.read_bytes()


def test_413_is_answered_before_the_rest_of_the_body_is_sent(server):
    """A declared length over --max-body-mb (1 MiB here): 413 while 99% of the body is unsent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"\0" * 1000)
        reply = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"--max-body-mb (1 MiB)" in reply


def test_413_for_a_chunked_body_cut_off_at_the_limit(server):
    def chunks():
        for _ in range(40):
            yield b"\0" * 65536  # 2.5 MiB in all, no declared length
    before = server.metric('onnx_serve_errors_total{kind="too_large"}')
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/v1/classify", body=chunks(), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 413
    except (BrokenPipeError, ConnectionResetError):  # the server may close before the client is done sending
        pass
    finally:
        conn.close()
    assert server.wait_metric('onnx_serve_errors_total{kind="too_large"}', lambda v: v > before) == before + 1
    assert server.metric("onnx_serve_queue_depth") == 0


def test_contract_health_and_schema_endpoints(server, exported_model):
    status, _, data = server.request("GET", "/v1/model")
    model = json.loads(data)
    assert status == 200 and model["labels"] == ["cat", "dog", "owl"] and model["variant"] == "fp32"
    import hashlib

    assert model["sha256"] == hashlib.sha256(exported_model.read_bytes()).hexdigest()
    assert model["preprocess"]["crop"] == 32 and "source_checkpoint_sha256" in model
    from alexnet_onnx.runtime import Predictor

    contract = Predictor(exported_model).contract  # the calibrated-score rule, as the CLI applies it
    assert model["temperature"] == contract.temperature
    assert model["acceptance"] == {"score": contract.accept_score, "threshold": contract.accept_threshold}
    assert server.request("GET", "/healthz")[:1] == (200,)
    assert server.request("GET", "/readyz")[0] == 200
    spec = json.loads(server.request("GET", "/openapi.json")[2])
    assert {"/v1/classify", "/v1/model", "/metrics", "/healthz", "/readyz", "/"} <= set(spec["paths"])


def test_metrics_follow_the_prometheus_text_format(server):
    server.classify(jpeg(), name="m.jpg")
    status, head, body = server.request("GET", "/metrics")
    assert status == 200 and head["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? -?[0-9.e+Inf]+$')
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif not line.startswith("# HELP "):
            assert sample.match(line), line
    for name in ("onnx_serve_requests_total", "onnx_serve_errors_total", "onnx_serve_images_total"):
        assert types[name] == "counter"
    assert types["onnx_serve_request_duration_seconds"] == "histogram"
    assert types["onnx_serve_batch_size"] == "histogram"
    assert types["onnx_serve_queue_depth"] == "gauge" and types["onnx_serve_images_per_second"] == "gauge"
    assert server.metric("onnx_serve_request_duration_seconds_count") >= 1
    assert server.metric('onnx_serve_images_total{outcome="ok"}') >= 1
    assert re.search(r'onnx_serve_model_info\{.*sha256="[0-9a-f]{64}".*\} 1', text)


def test_client_text_is_escaped_and_image_bytes_never_logged(server):
    marker = b"IMAGE-BYTES-MUST-NOT-BE-LOGGED"
    data = jpeg() + marker  # bytes after the JPEG's end are ignored by the decoder
    status, _, body = server.classify(data, name="evil\x1b[31m\nname")
    assert status == 200 and body["rows"][0]["path"] == "evil\x1b[31m\nname"
    raw = server.request("POST", "/v1/classify?name=%1b%5b2J%0a", b"not an image")[2]
    assert b"\x1b" not in raw and b"\\u001b" in raw  # JSON escapes, never a raw control character
    server.request("GET", "/v1/%1b%5b2J%0afake")
    deadline = time.monotonic() + 60
    while b"\\x1b[2J\\nfake" not in (log := server.log.read_bytes()):  # logged just after the answer
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.01)
    assert marker not in log and b"\x1b" not in log


def test_a_slow_client_or_one_that_leaves_mid_upload_holds_nothing(server):
    """One byte at a time, then gone: other requests are answered meanwhile and nothing is queued."""
    gone = server.metric('onnx_serve_errors_total{kind="client_gone"}')
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as slow:
        slow.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n")
        for i in range(5):
            slow.sendall(jpeg()[i:i + 1])
            status, _, body = server.classify(jpeg(seed=i), name=f"other-{i}.jpg")
            assert status == 200 and body["rows"][0]["label"] in ("cat", "dog", "owl")
            assert server.metric("onnx_serve_queue_depth") == 0
    assert server.wait_metric('onnx_serve_errors_total{kind="client_gone"}', lambda v: v > gone) == gone + 1
    assert server.metric("onnx_serve_queue_depth") == 0
    assert server.classify(jpeg(), name="after.jpg")[0] == 200


@pytest.mark.slow
def test_a_client_that_leaves_before_its_answer_frees_its_place(exported_model, tmp_path):
    s = start(exported_model, tmp_path, "--threads", "1", "--max-queue", "4")
    try:
        body, headers = multipart([(f"big{i}.jpg", big_jpeg(tmp_path / "big.jpg")) for i in range(4)])
        with socket.create_connection(("127.0.0.1", s.port), timeout=60) as sock:
            head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: {headers['Content-Type']}\r\n"
            sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert s.wait_metric("onnx_serve_queue_depth", lambda v: v == 4) == 4
        assert s.wait_metric('onnx_serve_errors_total{kind="client_gone"}', lambda v: v >= 1) == 1
        assert s.wait_metric("onnx_serve_queue_depth", lambda v: v == 0) == 0
        assert s.classify(jpeg(), name="next.jpg")[0] == 200
    finally:
        assert s.stop() == 0


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after_at_once(exported_model, tmp_path):
    s = start(exported_model, tmp_path, "--threads", "1", "--max-queue", "4")
    try:
        body, headers = multipart([(f"big{i}.jpg", big_jpeg(tmp_path / "big.jpg")) for i in range(4)])
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(s.request, "POST", "/v1/classify", body, headers)
            assert s.wait_metric("onnx_serve_queue_depth", lambda v: v == 4) == 4
            # Four more images fit only once all four above are answered: 503 while any waits.
            probe, probe_headers = multipart([(f"small{i}.jpg", jpeg(seed=i)) for i in range(4)])
            status, head, data = s.request("POST", "/v1/classify", probe, probe_headers)
            assert status == 503 and head["retry-after"] == "1" and "queue is full" in json.loads(data)["error"]
            assert first.result()[0] == 200 and len(json.loads(first.result()[2])["rows"]) == 4
        assert s.classify(jpeg(), name="retry.jpg")[0] == 200  # room again once the queue drained
        assert s.metric('onnx_serve_errors_total{kind="queue_full"}') == 1
    finally:
        assert s.stop() == 0


def test_token_auth_and_cors(exported_model, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token-123\n")
    s = start(exported_model, tmp_path, "--token-file", str(token), "--cors", "https://app.example")
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token-123"}):
            status, head, _ = s.request("POST", "/v1/classify", jpeg(), headers)
            assert status == 401 and head["www-authenticate"].startswith("Bearer")
        assert s.request("GET", "/metrics")[0] == 401 and s.request("GET", "/v1/model")[0] == 401
        assert s.request("GET", "/healthz")[0] == 200 and s.request("GET", "/readyz")[0] == 200
        good = {"Authorization": "Bearer s3cret-token-123", "Origin": "https://app.example"}
        status, head, _ = s.request("POST", "/v1/classify", jpeg(), good)
        assert status == 200 and head["access-control-allow-origin"] == "https://app.example"
        preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization"}
        status, head, _ = s.request("OPTIONS", "/v1/classify", headers=preflight)
        assert status == 200 and head["access-control-allow-origin"] == "https://app.example"
        status, head, _ = s.request("GET", "/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in head
    finally:
        assert s.stop() == 0


def test_no_cors_headers_without_cors(server):
    status, head, _ = server.request("GET", "/healthz", headers={"Origin": "https://app.example"})
    assert status == 200 and not any(k.startswith("access-control-") for k in head)
    assert server.request("OPTIONS", "/v1/classify", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})[0] == 405


def relabelled(exported_model: Path, path: Path, labels: list[str]) -> Path:
    import onnx

    model = onnx.load(str(exported_model))
    for prop in model.metadata_props:
        if prop.key == "labels":
            prop.value = json.dumps(labels)
    onnx.save(model, str(path))
    return path


def replace(src: Path, dest: Path) -> None:
    """As export-onnx writes: a complete file renamed over the old one."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copy(src, tmp)
    os.replace(tmp, dest)


@pytest.mark.slow
def test_hot_swap_refuses_a_defective_model_and_takes_a_good_one(exported_model, tmp_path):
    served = tmp_path / "model.onnx"
    shutil.copy(exported_model, served)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported_model.read_bytes()[:5000])
    four_labels = relabelled(exported_model, tmp_path / "four.onnx", ["a", "b", "c", "d"])
    renamed = relabelled(exported_model, tmp_path / "renamed.onnx", ["kat", "hond", "uil"])
    s = start(served, tmp_path)
    try:
        before = s.classify(jpeg(), name="p.jpg")[2]["rows"][0]
        for n, defective in enumerate((truncated, four_labels), start=1):
            replace(defective, served)
            assert s.wait_metric('onnx_serve_model_reloads_total{outcome="refused"}', lambda v: v >= n) == n
            model = json.loads(s.request("GET", "/v1/model")[2])
            assert model["generation"] == 1 and model["labels"] == ["cat", "dog", "owl"]
            assert s.classify(jpeg(), name="p.jpg")[2]["rows"][0] == before  # the old model keeps serving
        assert b"model reload refused" in s.log.read_bytes()
        replace(renamed, served)
        assert s.wait_metric('onnx_serve_model_reloads_total{outcome="ok"}', lambda v: v >= 1) == 1
        model = json.loads(s.request("GET", "/v1/model")[2])
        assert model["generation"] == 2 and model["labels"] == ["kat", "hond", "uil"]
        after = s.classify(jpeg(), name="p.jpg")[2]["rows"][0]
        names = dict(zip(["cat", "dog", "owl"], ["kat", "hond", "uil"]))
        assert after["label"] == names[before["label"]] and after["score"] == before["score"]
        s.proc.send_signal(signal.SIGHUP)  # reload on demand, the file unchanged
        assert s.wait_metric('onnx_serve_model_reloads_total{outcome="ok"}', lambda v: v >= 2) == 2
        assert json.loads(s.request("GET", "/v1/model")[2])["generation"] == 3
        assert s.metric('onnx_serve_model_reloads_total{outcome="refused"}') == 2
    finally:
        assert s.stop() == 0


@pytest.mark.slow
def test_sigterm_finishes_requests_in_flight_then_exits_0(exported_model, tmp_path):
    s = start(exported_model, tmp_path, "--threads", "1", "--max-queue", "8")
    body, headers = multipart([(f"big{i}.jpg", big_jpeg(tmp_path / "big.jpg")) for i in range(4)])
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(s.request, "POST", "/v1/classify", body, headers)
        assert s.wait_metric("onnx_serve_queue_depth", lambda v: v == 4) == 4
        s.proc.send_signal(signal.SIGTERM)
        status, _, data = pending.result()
    assert status == 200 and len(json.loads(data)["rows"]) == 4
    assert s.proc.wait(timeout=60) == 0
    assert b"draining" in s.log.read_bytes() and b"Traceback" not in s.log.read_bytes()


def test_model_defects_exit_3_with_the_clis_line_before_listening(exported_model, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(exported_model.read_bytes()[:5000])
    image = tmp_path / "a.jpg"
    image.write_bytes(jpeg())
    served = subprocess.run([str(BIN / "onnx-serve"), "-m", str(bad)], capture_output=True, text=True, timeout=120)
    predicted = subprocess.run([str(BIN / "onnx-predict"), "-m", str(bad), str(image)], capture_output=True,
                               text=True, timeout=120)
    assert served.returncode == predicted.returncode == 3
    assert served.stderr.splitlines() == predicted.stderr.splitlines()
    assert len(served.stderr.splitlines()) == 1


def test_usage_errors_exit_2_and_a_busy_port_exits_4(exported_model, tmp_path):
    empty = tmp_path / "token"
    empty.write_text("\n")
    proc = subprocess.run([str(BIN / "onnx-serve"), "-m", str(exported_model), "--token-file", str(empty)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([str(BIN / "onnx-serve"), "-m", str(exported_model), "--port", str(port)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_without_the_serve_extra_it_says_so_in_one_line(exported_model):
    script = ("import sys\nfor name in ('starlette', 'uvicorn'):\n    sys.modules[name] = None\n"
              "sys.argv = ['onnx-serve', '-m', sys.argv[1]]\n"
              "from alexnet_onnx.runtime.serve_cli import main\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", script, str(exported_model)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: onnx-serve needs the serve extra (starlette, uvicorn not installed): pip install 'alexnet-onnx[serve]'"]


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def browser(tmp_path: Path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=900,900", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)


def real_photo(tmp_path: Path, source: str) -> Path:
    if source == "shared":
        return sorted((SHARED_DATA / "flowers" / "train" / "roses").glob("*.jpg"))[0]
    path = tmp_path / "made-here.jpg"
    path.write_bytes(jpeg((640, 480), seed=7, orientation=3))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("source", ["generated", pytest.param("shared", marks=needs_shared_data)])
def test_the_web_page_classifies_a_photo_in_a_real_browser(server, tmp_path, source):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = real_photo(tmp_path, source)
    expected = server.classify(photo.read_bytes(), name=photo.name, top_k=5)[2]["rows"][0]
    driver = browser(tmp_path)
    try:
        driver.get(f"http://127.0.0.1:{server.port}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "sha256" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(photo))
        label = wait.until(lambda d: d.find_elements(By.ID, "top-label"))[0]
        assert label.text == expected["label"]
        scores = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".score")]
        assert scores == [f"{k['score']:.4f}" for k in expected["top_k"]]
        assert "ms" in driver.find_element(By.ID, "time").text
        assert driver.get_screenshot_as_png().startswith(b"\x89PNG")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []  # no refused script, style or request (the page's own CSP included)
    finally:
        driver.quit()
