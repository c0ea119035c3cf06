"""``ptp serve``: the OpenAI-compatible server on a tiny student, over loopback with a real uvicorn.

One server (started in a thread, API key set) serves every test; expected answers come from
``ptp generate --json`` with the same prompt, seed and sampling.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from ptp import Student
from ptp.cli import build_parser, main
from ptp.commands import serve as serve_command
from ptp.models import load_teacher
from ptp.config import DecodeConfig
from ptp.serve.app import create_app
from ptp.serve.engine import Engine
from ptp.serve.errors import APIError
from ptp.serve.schema import GenerationRequest
from ptp.serve.text import AnswerText
from ptp.serve.worker import Job, Worker
from tiny_models import tiny_teacher, tiny_tokenizer

KEY = "test-key"
PROMPTS = ["the cat sat", "where is the dog ?", "who ran under the tree ?", "a mat", "what did it do", "the dog",
           "why is it on the mat", "Q : the cat"]


class Served:
    """A running server: its base URL, engine, and the student directory it serves."""

    def __init__(self, directory: Path, port: int, engine) -> None:
        self.directory, self.engine, self.model = directory, engine, engine.model_id
        self.url = f"http://127.0.0.1:{port}"

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=30)

    def http(self, timeout: float | httpx.Timeout = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout)

    def metric(self, name: str) -> float:
        text = self.http().get("/metrics").text
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose vocabulary is the tiny tokenizer's (every generated id decodes to a word)."""
    root = tmp_path_factory.mktemp("serve")
    tokenizer = tiny_tokenizer()
    tiny_teacher("llama", vocab=len(tokenizer)).save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    student = Student.from_teacher(load_teacher(str(root / "teacher")), mode="o-ptp", num_draft_tokens=4, lora_rank=4,
                                   teacher_name=str(root / "teacher"))
    student.save_pretrained(root / "student")
    return root / "student"


@pytest.fixture(scope="module")
def served(student_dir):
    args = build_parser("serve").parse_args(["serve", str(student_dir), "--api-key", KEY, "--model-name", "tiny"])
    engine = serve_command.build_engine(args)  # the loading path of ptp serve
    sock = serve_command.listen("127.0.0.1", 0)
    server = serve_command.server(create_app(engine, api_key=KEY), log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    yield Served(student_dir, sock.getsockname()[1], engine)
    server.should_exit = True
    thread.join(15)


def ptp_generate(directory: Path, prompt: str, seed: int, max_tokens: int | None = None, chat: bool = True,
                 **sampling) -> dict:
    """``ptp generate --json`` for one prompt: the reference answer."""
    argv = ["generate", str(directory), prompt, "--json", "--no-baseline", "--seed", str(seed)]
    argv += [] if chat else ["--raw"]
    argv += [] if max_tokens is None else ["--max-new-tokens", str(max_tokens)]
    for name, value in sampling.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


def ask(served: Served, prompt: str, seed: int, chat: bool, stream: bool, max_tokens: int | None = None,
        client: openai.OpenAI | None = None, **sampling) -> tuple[str, str, dict, dict]:
    """One request through the official client: (text, finish_reason, usage, ptp stats)."""
    client = client or served.client()
    extra = {"extra_body": {"top_k": sampling.pop("top_k")}} if "top_k" in sampling else {}
    kwargs = dict(model=served.model, seed=seed, stream=stream, **sampling, **extra)
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    if chat:
        reply = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **kwargs)
    else:
        reply = client.completions.create(prompt=prompt, **kwargs)
    if not stream:
        choice = reply.choices[0]
        text = choice.message.content if chat else choice.text
        return text, choice.finish_reason, reply.usage.model_dump(), reply.ptp
    pieces, last = [], None
    for part in reply:
        choice = part.choices[0]
        pieces.append((choice.delta.content or "") if chat else choice.text)
        last = part
    return "".join(pieces), last.choices[0].finish_reason, last.usage.model_dump(), last.ptp


@pytest.mark.parametrize(
    "chat, stream, max_tokens, sampling",
    [
        (True, False, None, {}),  # ptp generate's default length and the student's own sampling
        (True, True, 40, {"temperature": 0.7, "top_p": 0.9}),
        (False, False, 30, {"top_k": 5}),
        (False, True, 30, {"temperature": 0}),
    ],
)
def test_openai_client_gets_what_ptp_generate_gives(served, chat, stream, max_tokens, sampling):
    expected = ptp_generate(served.directory, "the cat sat", 7, max_tokens, chat=chat, **sampling)
    text, finish, usage, stats = ask(served, "the cat sat", 7, chat, stream, max_tokens, **sampling)
    assert text == expected["text"] and usage["completion_tokens"] == expected["tokens"]
    assert finish == ("length" if expected["tokens"] == (max_tokens or 256) else "stop")
    # calls may differ from ptp generate's: pqd budgets rows by a cost curve timed on this machine
    assert stats["seed"] == 7 and 1 <= stats["teacher_calls"] <= expected["tokens"] and stats["strategy"] == "pqd"
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stop_string_ends_the_answer_before_it(served):
    full = ptp_generate(served.directory, "the dog", 3, 60, chat=False)["text"]
    words = full.split()
    stop = f" {words[len(words) // 2]}"  # a stop string in the middle of the answer
    for stream in (False, True):
        text, finish, usage, _ = ask(served, "the dog", 3, chat=False, stream=stream, max_tokens=60,
                                     client=None, stop=[stop, "never appears"])
        assert text == full[: full.index(stop)] and finish == "stop" and usage["completion_tokens"] < 60


def test_eight_concurrent_clients_each_get_their_own_answer(served):
    cases = [(PROMPTS[i], 100 + i, i % 2 == 0, i % 4 < 2) for i in range(8)]  # prompt, seed, chat, stream
    expected = [ptp_generate(served.directory, p, seed, 24, chat=chat)["text"] for p, seed, chat, _ in cases]
    answers: list[str | None] = [None] * 8

    def client(i: int) -> None:
        prompt, seed, chat, stream = cases[i]
        answers[i] = ask(served, prompt, seed, chat, stream, 24)[0]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == expected
    assert len(set(expected)) == 8  # distinct answers, so a mix-up could not go unseen


def bad(path: str, body, status: int, param: str | None, method: str = "POST"):
    """One malformed request: a JSON body (dict) or raw bytes, and the error it must get."""
    return pytest.param(method, path, body, status, param, id=f"{status}-{param}-{str(body)[:40]}")


CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
MODEL = "tiny"
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "the cat"}]}
OK_COMPLETION = {"model": MODEL, "prompt": "the cat"}


@pytest.mark.parametrize(
    "method, path, body, status, param",
    [
        bad(CHAT, b"{", 400, None),
        bad(CHAT, b"[1, 2]", 400, None),
        bad(CHAT, b"\xff\xfe", 400, None),
        bad(CHAT, b"[" * 100_000 + b"]" * 100_000, 400, None),
        bad(COMPLETIONS, b'{"model": "tiny", "prompt": "a", "temperature": NaN}', 400, None),
        bad(CHAT, {"messages": OK_CHAT["messages"]}, 400, "model"),
        bad(CHAT, {**OK_CHAT, "model": "gpt-4o"}, 404, "model"),
        bad(CHAT, {**OK_CHAT, "model": 3}, 400, "model"),
        bad(CHAT, {"model": MODEL}, 400, "messages"),
        bad(CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages"),
        bad(CHAT, {"model": MODEL, "messages": []}, 400, "messages"),
        bad(CHAT, {"model": MODEL, "messages": ["hi"]}, 400, "messages[0]"),
        bad(CHAT, {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
        bad(CHAT, {"model": MODEL, "messages": [{"role": ["user"], "content": "x"}]}, 400, "messages[0].role"),
        bad(CHAT, {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
        bad(CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            400, "messages[0].content[0]"),
        bad(CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "x", "tool_calls": []}]}, 400,
            "messages[0].tool_calls"),
        bad(CHAT, {**OK_CHAT, "n": 2}, 400, "n"),
        bad(CHAT, {**OK_CHAT, "logprobs": True}, 400, "logprobs"),
        bad(CHAT, {**OK_CHAT, "tools": [{"type": "function"}]}, 400, "tools"),
        bad(CHAT, {**OK_CHAT, "response_format": {"type": "json_object"}}, 400, "response_format"),
        bad(CHAT, {**OK_CHAT, "temperature": "hot"}, 400, "temperature"),
        bad(CHAT, {**OK_CHAT, "temperature": 2.5}, 400, "temperature"),
        bad(CHAT, {**OK_CHAT, "top_p": 0}, 400, "top_p"),
        bad(CHAT, {**OK_CHAT, "top_k": -1}, 400, "top_k"),
        bad(CHAT, {**OK_CHAT, "top_k": 1.5}, 400, "top_k"),
        bad(CHAT, {**OK_CHAT, "max_tokens": 0}, 400, "max_tokens"),
        bad(CHAT, {**OK_CHAT, "max_tokens": "10"}, 400, "max_tokens"),
        bad(CHAT, {**OK_CHAT, "max_tokens": True}, 400, "max_tokens"),
        bad(CHAT, {**OK_CHAT, "max_tokens": 100_000}, 400, "max_tokens"),
        bad(CHAT, {**OK_CHAT, "max_tokens": 10, "max_completion_tokens": 20}, 400, "max_completion_tokens"),
        bad(CHAT, {**OK_CHAT, "seed": -1}, 400, "seed"),
        bad(CHAT, {**OK_CHAT, "seed": 2**70}, 400, "seed"),
        bad(CHAT, {**OK_CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        bad(CHAT, {**OK_CHAT, "stop": ""}, 400, "stop"),
        bad(CHAT, {**OK_CHAT, "stop": 3}, 400, "stop"),
        bad(CHAT, {**OK_CHAT, "stream": "yes"}, 400, "stream"),
        bad(CHAT, {**OK_CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options"),
        bad(COMPLETIONS, {"model": MODEL}, 400, "prompt"),
        bad(COMPLETIONS, {"model": MODEL, "prompt": [1, 2, 3]}, 400, "prompt"),
        bad(COMPLETIONS, b'{"model": "tiny", "prompt": "\\ud800"}', 400, "prompt"),
        bad(COMPLETIONS, {"model": MODEL, "prompt": "the cat " * 600}, 400, "prompt"),  # longer than the context
        bad(COMPLETIONS, {**OK_COMPLETION, "echo": True}, 400, "echo"),
        bad(COMPLETIONS, {**OK_COMPLETION, "messages": OK_CHAT["messages"]}, 400, "messages"),
        bad(COMPLETIONS, {**OK_COMPLETION, "prompt": "x" * (1 << 20)}, 413, None),
        bad(CHAT, None, 405, None, method="GET"),
        bad("/v1/nowhere", {}, 404, None),
    ],
)
def test_malformed_requests_get_openai_errors(served, method, path, body, status, param):
    content = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    response = served.http().request(method, path, content=content)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and "Traceback" not in response.text
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_body_over_the_limit_without_content_length_gets_413(served):
    chunks = (b"x" * 65536 for _ in range(20))  # chunked transfer: the size is known only while reading
    response = served.http().post(COMPLETIONS, content=chunks)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_disconnect_mid_answer_frees_the_worker(served):
    long = {"model": MODEL, "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 480, "temperature": 0}
    before = served.metric("ptp_requests_cancelled_total")
    with served.http() as http, http.stream("POST", CHAT, json={**long, "stream": True}) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first verified text arrived: leave
    with pytest.raises(httpx.ReadTimeout):  # a client that gives up waiting for a whole answer
        served.http(timeout=httpx.Timeout(30, read=0.2)).post(CHAT, json=long)
    deadline = time.monotonic() + 20
    while served.metric("ptp_requests_cancelled_total") < before + 2:
        assert time.monotonic() < deadline, "a disconnected client's decoding was not stopped"
        time.sleep(0.05)
    assert served.metric("ptp_queue_depth") == 0
    expected = ptp_generate(served.directory, "a mat", 5, 8)
    assert ask(served, "a mat", 5, chat=True, stream=False, max_tokens=8)[0] == expected["text"]


def test_api_key_is_required_except_for_health(served):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", CHAT)):
            response = httpx.request(method, served.url + path, headers=headers, json=OK_CHAT)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        served.client(key="wrong").chat.completions.create(model=MODEL, messages=OK_CHAT["messages"])
    assert httpx.get(served.url + "/health").json()["status"] == "ok"
    assert [m.id for m in served.client().models.list()] == [MODEL]


def test_metrics_count_requests_tokens_and_calls(served):
    ask(served, "the dog", 1, chat=True, stream=False, max_tokens=5)
    text = served.http().get("/metrics").text
    assert re.search(r'^ptp_requests_total\{endpoint="/v1/chat/completions",status="200"\} [1-9]', text, re.M)
    for name in ("ptp_completion_tokens_total", "ptp_teacher_calls_total", "ptp_request_latency_seconds_count",
                 "ptp_time_to_first_token_seconds_count"):
        assert served.metric(name) > 0
    assert 1 <= served.metric("ptp_accepted_tokens_per_call") <= 5  # the student's N + 1 at most


def test_a_chat_template_that_refuses_a_conversation_is_a_400(student_dir):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    engine = Engine(Student.from_pretrained(student_dir).eval(), tokenizer, DecodeConfig(), "tiny")
    request = GenerationRequest(chat=True, messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    loop = asyncio.new_event_loop()
    with pytest.raises(APIError) as refused:
        engine.job(request, loop)
    loop.close()
    assert refused.value.status == 400 and refused.value.param == "messages" and "alternate" in refused.value.message


def test_answer_text_holds_back_a_possible_stop_string():
    words = ["the", " ca", "t sat", " on"]
    text = AnswerText(lambda ids: "".join(words[i] for i in ids), stops=("cat s",))
    assert text.add([0]) == "the" and text.add([1]) == " " and not text.stopped  # "ca" may begin "cat s"
    assert text.add([2]) == "" and text.stopped and text.text == "the " and text.finish() == ""


def test_worker_runs_one_job_at_a_time_in_arrival_order_and_bounds_its_queue():
    running, order, overlap = [], [], []
    loop = asyncio.new_event_loop()

    def run(job: Job) -> None:
        overlap.append(len(running))
        running.append(job)
        time.sleep(0.01)
        order.append(job.seed)
        running.remove(job)

    worker = Worker(run, max_queue=6)
    jobs = [Job(ids=None, max_tokens=1, sampling=None, seed=i, stop=(), loop=loop) for i in range(7)]
    for job in jobs[:6]:
        worker.submit(job)
    with pytest.raises(APIError) as full:  # a full queue refuses more work (a 503, not a client mistake)
        worker.submit(jobs[6])
    assert full.value.status == 503 and full.value.code == "server_busy"
    worker.start()
    deadline = time.monotonic() + 10
    while worker.depth:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    worker.close()
    loop.close()
    assert order == list(range(6)) and set(overlap) == {0}


@pytest.mark.parametrize("argv, message", [
    (["serve", "/nonexistent/student"], "does not exist"),
    (["serve", "{dir}", "--port", "70000"], "--port"),
    (["serve", "{dir}", "--strategy", "beam"], "strategy"),
    (["serve", "{dir}", "--max-queue", "0"], "--max-queue"),
    (["serve", "{dir}", "--log-level", "loud"], "--log-level"),
])
def test_serve_flag_mistakes_are_one_line_errors(student_dir, capsys, argv, message):
    assert main([a.format(dir=student_dir) for a in argv]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("ptp serve: error:") and message in last


def test_ptp_serve_command_serves_until_interrupted(student_dir):
    """The real command in its own process: it prints its URL, answers, and stops on SIGINT (uvicorn shuts
    down, then hands the signal on: ptp's usual exit code 130, without a traceback)."""
    process = subprocess.Popen([sys.executable, "-m", "ptp.cli", "serve", str(student_dir), "--port", "0",
                                "--model-name", "tiny", "--log-level", "warning"], stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "/v1" not in line:
            assert time.monotonic() < deadline and process.poll() is None, "ptp serve did not start"
            line = process.stderr.readline()
        url = re.search(r"http://\S+/v1", line).group(0)
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30)
        reply = client.completions.create(model="tiny", prompt="the cat", max_tokens=4, seed=0)
        assert reply.usage.completion_tokens <= 4 and reply.ptp["seed"] == 0
    finally:
        process.send_signal(signal.SIGINT)  # as Ctrl-C
        rest = process.communicate(timeout=20)[1]
    assert process.returncode == 130 and "Traceback" not in rest and "ptp serve: interrupted" in rest
