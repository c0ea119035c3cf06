"""Server counters and latency histograms, rendered in the Prometheus text exposition format."""

from __future__ import annotations

import threading
from collections import Counter

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds


class Histogram:
    """Cumulative buckets, sum and count of observed values (Prometheus histogram semantics)."""

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound}"}} {n}' for bound, n in zip(BUCKETS, self.counts)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


class Metrics:
    """Everything ``GET /metrics`` reports; updated from the event loop and the decoding thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, HTTP status) -> responses
        self.cancelled = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.teacher_calls = 0
        self.latency = Histogram()
        self.first_token = Histogram()

    def response(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def cancel(self) -> None:
        with self._lock:
            self.cancelled += 1

    def answer(self, prompt_tokens: int, completion_tokens: int, calls: int, latency: float, first_token: float | None) -> None:
        """One finished answer: its tokens, teacher calls, latency and time to its first verified tokens."""
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.teacher_calls += calls
            self.latency.observe(latency)
            if first_token is not None:
                self.first_token.observe(first_token)

    def render(self, queue_depth: int) -> str:
        with self._lock:
            lines: list[str] = []

            def metric(name: str, kind: str, help: str, values: list[str]) -> None:
                lines.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", *values])

            metric("ptp_requests_total", "counter", "HTTP responses by endpoint and status code.",
                   [f'ptp_requests_total{{endpoint="{e}",status="{s}"}} {n}' for (e, s), n in sorted(self.requests.items())])
            metric("ptp_requests_cancelled_total", "counter", "Answers stopped because the client went away.",
                   [f"ptp_requests_cancelled_total {self.cancelled}"])
            metric("ptp_prompt_tokens_total", "counter", "Prompt tokens of finished answers.",
                   [f"ptp_prompt_tokens_total {self.prompt_tokens}"])
            metric("ptp_completion_tokens_total", "counter", "Verified tokens generated for finished answers.",
                   [f"ptp_completion_tokens_total {self.completion_tokens}"])
            metric("ptp_teacher_calls_total", "counter", "Model calls (teacher verifications) of finished answers.",
                   [f"ptp_teacher_calls_total {self.teacher_calls}"])
            rate = self.completion_tokens / self.teacher_calls if self.teacher_calls else 0.0
            metric("ptp_accepted_tokens_per_call", "gauge", "Verified tokens per model call over all finished answers.",
                   [f"ptp_accepted_tokens_per_call {rate:.6f}"])
            metric("ptp_queue_depth", "gauge", "Answers waiting for or running on the decoding worker.",
                   [f"ptp_queue_depth {queue_depth}"])
            metric("ptp_request_latency_seconds", "histogram", "Seconds from a request to its last token.",
                   self.latency.lines("ptp_request_latency_seconds"))
            metric("ptp_time_to_first_token_seconds", "histogram", "Seconds from a request to its first verified tokens.",
                   self.first_token.lines("ptp_time_to_first_token_seconds"))
            return "\n".join(lines) + "\n"
