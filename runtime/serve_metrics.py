"""`onnx-serve`'s counters, gauges and histograms, rendered in the Prometheus text format (0.0.4).

Names follow Prometheus conventions: the `onnx_serve_` prefix, base units (seconds), `_total` on
counters, `_bucket`/`_sum`/`_count` on histograms. Stdlib only: the handful of series a single
process exposes do not need a client library. Updated from the event loop and the batch threads
alike, so every change takes the one lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque

PREFIX = "onnx_serve"
# Request latency buckets (seconds): a thumbnail answers in milliseconds, a camera photo in tenths.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# images/s is the rate over this trailing window.
RATE_WINDOW_S = 10.0
# What the error counter's `kind` label takes: one per way a request or an image can fail.
ERROR_KINDS = ("image", "unsupported", "too_large", "queue_full", "unauthorized", "bad_request",
               "client_gone", "timeout", "model", "internal")


def escape_label(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    """Powers of two up to `max_batch`, and `max_batch` itself."""
    sizes, size = {max_batch}, 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class Metrics:
    """Everything /metrics shows; `render()` gives the text format."""

    def __init__(self, max_batch: int) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.errors: dict[str, int] = {kind: 0 for kind in ERROR_KINDS}
        self.images = {"ok": 0, "error": 0}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(batch_buckets(max_batch))
        self.reloads = {"ok": 0, "refused": 0}
        self.queue_depth = 0
        self.model: dict[str, str] = {}
        self._done: deque[tuple[float, int]] = deque()
        self.started = time.monotonic()

    def request(self, handler: str, method: str, status: int, seconds: float | None) -> None:
        with self._lock:
            key = (handler, method, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            if seconds is not None:
                self.latency.observe(seconds)

    def error(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + n

    def batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(size)

    def images_done(self, ok: int, failed: int) -> None:
        with self._lock:
            self.images["ok"] += ok
            self.images["error"] += failed
            now = time.monotonic()
            self._done.append((now, ok + failed))
            self._trim(now)

    def set_queue_depth(self, depth: int) -> None:
        with self._lock:
            self.queue_depth = depth

    def set_model(self, info: dict[str, str]) -> None:
        with self._lock:
            self.model = dict(info)

    def reload(self, outcome: str) -> None:
        with self._lock:
            self.reloads[outcome] += 1

    def _trim(self, now: float) -> None:
        while self._done and self._done[0][0] < now - RATE_WINDOW_S:
            self._done.popleft()

    def images_per_second(self) -> float:
        with self._lock:
            now = time.monotonic()
            self._trim(now)
            window = min(RATE_WINDOW_S, max(now - self.started, 1e-9))
            return sum(n for _, n in self._done) / window

    def render(self) -> str:
        rate = self.images_per_second()
        p = PREFIX
        with self._lock:
            out = [f"# HELP {p}_requests_total HTTP requests answered, by handler, method and status code.",
                   f"# TYPE {p}_requests_total counter"]
            for (handler, method, status), n in sorted(self.requests.items()):
                out.append(f'{p}_requests_total{{handler="{escape_label(handler)}",method="{escape_label(method)}",'
                           f'code="{status}"}} {n}')
            out += [f"# HELP {p}_errors_total Failed requests and unusable images, by kind.",
                    f"# TYPE {p}_errors_total counter"]
            out += [f'{p}_errors_total{{kind="{escape_label(k)}"}} {n}' for k, n in sorted(self.errors.items())]
            out += [f"# HELP {p}_images_total Images classified (ok) or answered with an error row (error).",
                    f"# TYPE {p}_images_total counter"]
            out += [f'{p}_images_total{{outcome="{k}"}} {n}' for k, n in sorted(self.images.items())]
            out += [f"# HELP {p}_images_per_second Images answered per second over the last {RATE_WINDOW_S:g} s.",
                    f"# TYPE {p}_images_per_second gauge", f"{p}_images_per_second {rate:.3f}"]
            out += [f"# HELP {p}_request_duration_seconds Time from a classify request's arrival to its answer.",
                    f"# TYPE {p}_request_duration_seconds histogram"]
            out += self.latency.lines(f"{p}_request_duration_seconds")
            out += [f"# HELP {p}_batch_size Images per model call.", f"# TYPE {p}_batch_size histogram"]
            out += self.batch_size.lines(f"{p}_batch_size")
            out += [f"# HELP {p}_queue_depth Images admitted and not yet answered.",
                    f"# TYPE {p}_queue_depth gauge", f"{p}_queue_depth {self.queue_depth}"]
            out += [f"# HELP {p}_model_reloads_total Model swaps: loaded (ok) or refused as defective (refused).",
                    f"# TYPE {p}_model_reloads_total counter"]
            out += [f'{p}_model_reloads_total{{outcome="{k}"}} {n}' for k, n in sorted(self.reloads.items())]
            labels = ",".join(f'{k}="{escape_label(v)}"' for k, v in sorted(self.model.items()))
            out += [f"# HELP {p}_model_info The model being served (sha256 of its file, variant, arch).",
                    f"# TYPE {p}_model_info gauge", f"{p}_model_info{{{labels}}} 1"]
            out += [f"# HELP {p}_uptime_seconds Seconds since the server started.",
                    f"# TYPE {p}_uptime_seconds gauge", f"{p}_uptime_seconds {time.monotonic() - self.started:.3f}"]
        return "\n".join(out) + "\n"
