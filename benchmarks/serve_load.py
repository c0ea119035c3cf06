"""Load test of ``ptp serve`` on loopback: 1, 4 and 8 concurrent streaming chat clients for a bounded time.

    python benchmarks/serve_load.py [STUDENT_DIR] [--clients 1 4 8] [--duration 60] [--max-tokens 64]
                                    [--dtype float32] [--strategy pqd] [--url URL] [--out FILE.json]

Starts ``ptp serve`` in its own process (the shipped default student unless STUDENT_DIR is given;
``--url`` targets a server already running instead), then for each client count runs that many
clients, each sending the packaged development questions' first turns one after another through the
official ``openai`` client (streaming, seed = the request's number) until ``--duration`` seconds have
passed; answers under way then finish. Per client count it reports requests/s and tokens/s over the
wall time, time to first token (first streamed text) and latency (p50, p95), teacher calls per token,
and errors (any failed request or non-200; they must be 0). Results are written atomically to
``--out`` (default ``benchmarks/results/serve_load.json``). The server decodes one answer at a time
(batched decoding is future work), so this is the baseline it must beat: throughput flat in the
number of clients, waiting time growing with it.

Threads: the server inherits this process's environment; set OMP_NUM_THREADS to choose torch's
intra-op threads on a shared machine (recorded in the results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import openai

from ptp.io import write_json

RESULTS = Path(__file__).parent / "results" / "serve_load.json"


def questions() -> list[str]:
    """First turns of the packaged Spec-Bench-style development questions."""
    path = Path(str(resources.files("ptp") / "assets" / "dev_questions.jsonl"))
    return [json.loads(line)["turns"][0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@contextmanager
def served(args: argparse.Namespace) -> Iterator[str]:
    """The base URL of a ``ptp serve`` started for this run (stopped with SIGINT afterwards)."""
    if args.url:
        yield args.url
        return
    command = [sys.executable, "-m", "ptp.cli", "serve", "--port", "0", "--log-level", "warning",
               "--dtype", args.dtype, "--strategy", args.strategy, "--model-name", "served"]
    command += [args.student] if args.student else []
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # the first run converts the default teacher once
        line = ""
        while not re.search(r"http://\S+/v1", line):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ptp serve did not start: {line.strip() or process.stderr.read()}")
            line = process.stderr.readline()
            print(line, end="", file=sys.stderr)
        threading.Thread(target=drain, args=(process.stderr,), daemon=True).start()
        yield re.search(r"http://\S+/v1", line).group(0)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def drain(stream: Any) -> None:
    """Read the server's log to its end, so the server never blocks writing to a full pipe."""
    for _ in stream:
        pass


def one_request(client: openai.OpenAI, model: str, prompt: str, seed: int, max_tokens: int) -> dict[str, Any]:
    """A streamed chat answer: latency, time to first text, tokens and teacher calls, or the error."""
    start = time.perf_counter()
    first = None
    try:
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, seed=seed, stream=True)
        last = None
        for part in stream:
            if first is None and part.choices and part.choices[0].delta.content:
                first = time.perf_counter() - start
            last = part
        stats = getattr(last, "ptp", None) or {}
        return {"latency": time.perf_counter() - start, "first_token": first,
                "tokens": last.usage.completion_tokens, "calls": stats.get("teacher_calls", 0)}
    except openai.OpenAIError as e:
        return {"error": f"{type(e).__name__}: {e}"}


def load_run(url: str, model: str, clients: int, duration: float, max_tokens: int, prompts: list[str],
             api_key: str) -> dict[str, Any]:
    """``clients`` threads sending requests back to back until ``duration`` seconds have passed."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    counter = iter(range(10**9))  # request numbers: prompt choice and seed
    start = time.perf_counter()

    def client_loop() -> None:
        client = openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=600)
        while time.perf_counter() - start < duration:
            with lock:
                n = next(counter)
            result = one_request(client, model, prompts[n % len(prompts)], n, max_tokens)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    done = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    latencies = [r["latency"] for r in done]
    firsts = [r["first_token"] for r in done if r["first_token"] is not None]
    tokens = sum(r["tokens"] for r in done)
    calls = sum(r["calls"] for r in done)
    return {
        "clients": clients,
        "wall_s": round(wall, 3),
        "requests": len(done),
        "errors": len(errors),
        "error_samples": errors[:3],
        "requests_per_s": round(len(done) / wall, 4),
        "tokens_per_s": round(tokens / wall, 2),
        "tokens_per_call": round(tokens / calls, 3) if calls else None,
        "mean_tokens": round(tokens / len(done), 1) if done else None,
        "time_to_first_token_s": summary(firsts),
        "latency_s": summary(latencies),
    }


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "mean": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]  # nearest rank
    return {"p50": round(statistics.median(ordered), 4), "p95": round(p95, 4), "mean": round(statistics.fmean(ordered), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", nargs="?", help="student directory (default: the shipped default student)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="concurrent clients per run (default 1 4 8)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of new requests per run (default 60)")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default 64)")
    parser.add_argument("--dtype", default="float32", help="the server's --dtype (default float32)")
    parser.add_argument("--strategy", default="pqd", help="the server's --strategy (default pqd)")
    parser.add_argument("--url", help="an already running server's base URL (.../v1) instead of starting one")
    parser.add_argument("--model", default="served", help="model id to request (with --url: that server's id)")
    parser.add_argument("--api-key", default=os.environ.get("PTP_API_KEY", "unused"), help="bearer key (default $PTP_API_KEY)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--note", default="", help="conditions of the run worth recording (e.g. other load on the machine)")
    args = parser.parse_args()
    prompts = questions()
    runs = []
    with served(args) as url:
        warm = openai.OpenAI(base_url=url, api_key=args.api_key, max_retries=0, timeout=600)
        one_request(warm, args.model, prompts[0], 0, 8)  # connection and first-call costs stay out of the runs
        for clients in args.clients:
            run = load_run(url, args.model, clients, args.duration, args.max_tokens, prompts, args.api_key)
            runs.append(run)
            print(json.dumps(run), flush=True)
    write_json(args.out, {
        "benchmark": "serve_load",
        "student": args.student or "shipped default (smollm2-135m-instruct)",
        "url": args.url or "ptp serve started by the benchmark on 127.0.0.1",
        "dtype": args.dtype, "strategy": args.strategy, "max_tokens": args.max_tokens, "duration_s": args.duration,
        "requests": "streaming chat, first turns of the packaged dev questions, seed = request number, the student's sampling",
        "machine": {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform()},
        "note": args.note,
        "runs": runs,
    })
    return 1 if any(run["errors"] for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
