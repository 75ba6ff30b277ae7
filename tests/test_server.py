"""The HTTP server as a real process on 127.0.0.1, driven by the official `openai` client (and raw httpx for
malformed requests). The model is the fake of test_generate.py (greedy output is a known token chain), served
through the real app; an end-to-end run on a tiny deepseek2 GGUF lives in test_cli_run.py."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai client (pip install openai)")
try:  # the openai client's HTTP library (httpx, published as httpx2 for openai >= 3)
    import httpx2 as httpx
except ImportError:
    httpx = pytest.importorskip("httpx")

from test_generate import EOG, ORDER, TOK, V, chain, cycle_next  # noqa: E402

TESTS = Path(__file__).resolve().parent
KEY = "sk-test-123"

LAUNCH = r"""
import sys, time
import uvicorn
from test_generate import EOG, ORDER, TOK, V, FakeModel, FakeTokenizer, PIECES, cycle_next
from moe_gguf.server.app import create_app

port, n_ctx, delay, parallel, queue, key, eog = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7] == "1"

class SlowModel(FakeModel):
    def forward(self, tokens, cache, all_logits=False):
        time.sleep(delay)
        return super().forward(tokens, cache, all_logits)

class Tok(FakeTokenizer):
    bos_id = None
    def encode(self, text, add_special=True, parse_special=False):
        return [ord(c) % (V - 3) + 1 for c in text]

class Template:
    def render(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + ("<assistant>" if add_generation_prompt else "")

nxt = cycle_next(ORDER)
if eog:
    nxt[17] = EOG
app = create_app(SlowModel(nxt, n_ctx=n_ctx), Tok(PIECES), Template(), model_name="fake-moe",
                 api_key=key or None, parallel=parallel, max_queue=queue)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def fake_encode(text: str) -> list[int]:
    return [ord(c) % (V - 3) + 1 for c in text]


NEXT = cycle_next(ORDER)
NEXT[17] = EOG


def expected(prompt_ids: list[int], n: int) -> tuple[str, str, int]:
    """(text, finish_reason, completion_tokens) of greedy decoding from the fake model's table."""
    ids = chain(prompt_ids[-1], NEXT, n)
    if ids[-1] == EOG:
        return TOK.decode(ids[:-1]), "stop", len(ids)
    return TOK.decode(ids), "length", len(ids)


def chat_ids(messages: list[dict]) -> list[int]:
    return fake_encode("".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process on a free loopback port: the fake-model app by default, or `argv` + ["--port", port]."""

    def __init__(self, n_ctx: int = 256, delay: float = 0.0, parallel: int = 1, queue: int = 16, key: str = KEY,
                 eog: bool = True, argv: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
        if argv is None:
            argv = ["-c", LAUNCH, str(self.port), str(n_ctx), str(delay), str(parallel), str(queue), key, "1" if eog else "0"]
        else:
            argv = argv + ["--port", str(self.port)]
        self.proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server died: {self.proc.stdout.read().decode()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError("server did not start in 90 s")

    def client(self, **kw) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", self.key or "none"), max_retries=0, **kw)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def slow_server():
    s = Server(n_ctx=4096, delay=0.05, parallel=1, queue=1, key="", eog=False)  # never ends on its own
    yield s
    s.close()


MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def test_chat_completion(server: Server) -> None:
    r = server.client().chat.completions.create(model="fake-moe", messages=MSGS, max_tokens=6, temperature=0)
    text, finish, n = expected(chat_ids(MSGS), 6)
    assert r.choices[0].message.content == text and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == finish
    assert r.usage.prompt_tokens == len(chat_ids(MSGS)) and r.usage.completion_tokens == n
    assert r.usage.total_tokens == r.usage.prompt_tokens + n
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "fake-moe"


def test_chat_stream_until_eog(server: Server) -> None:
    msgs = [{"role": "user", "content": "stream please"}]
    stream = server.client().chat.completions.create(
        model="x", messages=msgs, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text, finish, n = expected(chat_ids(msgs), 500)
    assert finish == "stop"  # the chain reaches the end-of-generation token
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_completion_stream_and_not(server: Server) -> None:
    c = server.client()
    prompt = "Once upon a time"
    text, finish, n = expected(fake_encode(prompt), 9)
    r = c.completions.create(model="x", prompt=prompt, max_tokens=9, temperature=0)
    assert r.choices[0].text == text and r.choices[0].finish_reason == finish and r.usage.completion_tokens == n
    s = list(c.completions.create(model="x", prompt=prompt, max_tokens=9, temperature=0, stream=True))
    assert "".join(x.choices[0].text for x in s) == text and s[-1].choices[0].finish_reason == finish
    # token-id prompts
    r = c.completions.create(model="x", prompt=[1, 2, 3], max_tokens=4, temperature=0)
    assert r.choices[0].text == expected([1, 2, 3], 4)[0]


def test_stop_sequences(server: Server) -> None:
    prompt = "abc"
    full, _, _ = expected(fake_encode(prompt), 12)
    stop = full[4:6]
    c = server.client()
    r = c.completions.create(model="x", prompt=prompt, max_tokens=12, temperature=0, stop=[stop, "zz-never"])
    assert r.choices[0].text == full[: full.find(stop)] and r.choices[0].finish_reason == "stop"
    s = list(c.completions.create(model="x", prompt=prompt, max_tokens=12, temperature=0, stop=stop, stream=True))
    assert "".join(x.choices[0].text for x in s) == full[: full.find(stop)]


def test_seeded_sampling_is_reproducible(server: Server) -> None:
    c = server.client()
    kw = dict(model="x", prompt="seed", max_tokens=12, temperature=1.5, top_p=1.0, extra_body={"top_k": 0, "min_p": 0})
    a = c.completions.create(seed=3, **kw).choices[0].text
    b = c.completions.create(seed=3, **kw).choices[0].text
    assert a == b


def test_models_health_and_page(server: Server) -> None:
    m = server.client().models.list()
    assert [x.id for x in m.data] == ["fake-moe"]
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/chat/completions" in page.text


def _post(server: Server, path: str, body: bytes | dict, key: str | None = KEY) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "path, body, needle",
    [
        ("/v1/chat/completions", b"{not json", "JSON"),
        ("/v1/chat/completions", {"model": "x"}, "messages"),
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ("/v1/chat/completions", {"messages": MSGS, "temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {"messages": MSGS, "top_p": 0}, "top_p"),
        ("/v1/chat/completions", {"messages": MSGS, "max_tokens": -5}, "max_tokens"),
        ("/v1/chat/completions", {"messages": MSGS, "n": 3}, "n = 1"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 300}]}, "maximum context length"),
        ("/v1/chat/completions", {"messages": MSGS, "max_tokens": 250}, "max_tokens is too large"),
        ("/v1/chat/completions", {"messages": [{"role": "user"}]}, "content"),
        ("/v1/chat/completions", [MSGS], "JSON object"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", {"prompt": [1, 999]}, "outside the vocabulary"),
        ("/v1/completions", {"prompt": ""}, "empty"),
    ],
)
def test_client_errors_are_400_openai_json(server: Server, path: str, body, needle: str) -> None:
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"


def test_errors_through_the_openai_client(server: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        server.client().completions.create(model="x", prompt="y" * 400)
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    r = _post(server, "/v1/completions", {"prompt": "a"}, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # no JSON content type (curl -d sends a form type): the body is still read as JSON
    r = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "abc", "max_tokens": 2, "temperature": 0}',
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected(fake_encode("abc"), 2)[0]
    r = httpx.get(server.url + "/v1/nowhere", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and "error" in r.json()


def test_queue_full_is_503_and_disconnect_frees_the_slot(slow_server: Server) -> None:
    s = slow_server
    url = s.url + "/v1/completions"
    body = {"prompt": "long", "max_tokens": 2000, "temperature": 0, "stream": True}  # 100 s if nobody stops it
    with httpx.Client(timeout=30) as c1, httpx.Client(timeout=30) as c2:
        with c1.stream("POST", url, json=body) as r1:  # takes the only slot
            assert r1.status_code == 200
            lines = r1.iter_lines()
            assert next(lines).startswith("data: ")
            with c2.stream("POST", url, json=body) as r2:  # waits in the queue (limit 1)
                time.sleep(0.3)
                r3 = httpx.post(url, json=body, timeout=10)  # nowhere to go
                assert r3.status_code == 503
                assert "busy" in r3.json()["error"]["message"]
                assert r2.status_code == 200
            # r2 disconnected while queued, r1 disconnects mid-stream now
        t0 = time.time()
        while time.time() - t0 < 3:
            h = httpx.get(s.url + "/health").json()
            if h["active"] == 0 and h["waiting"] == 0:
                break
            time.sleep(0.1)
        assert h["active"] == 0 and h["waiting"] == 0, h
    # the server is free again: a new request is served at once
    t0 = time.time()
    r = s.client().completions.create(model="x", prompt="again", max_tokens=3, temperature=0)
    assert r.choices[0].text == TOK.decode(chain(fake_encode("again")[-1], cycle_next(ORDER), 3))
    assert time.time() - t0 < 5


def test_concurrent_clients_all_get_exact_answers(server: Server) -> None:
    prompts = [f"client {i} says hi" for i in range(6)]
    out: dict[int, str] = {}

    def work(i: int) -> None:
        s = server.client().completions.create(model="x", prompt=prompts[i], max_tokens=10, temperature=0, stream=True)
        out[i] = "".join(x.choices[0].text for x in s)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {i: out.get(i) for i in range(6)} == {i: expected(fake_encode(p), 10)[0] for i, p in enumerate(prompts)}


# ------------------------------------------------------------------------------------------ end to end, real model
from test_cli_run import greedy_reference, tiny_gguf  # noqa: E402,F401  (the fixture and the no-cache reference)


def test_serve_end_to_end_on_a_tiny_model(tiny_gguf: Path) -> None:
    from moe_gguf.chat import ChatTemplate
    from moe_gguf.generate import encode_chat
    from moe_gguf.gguf import GGUFFile
    from moe_gguf.tokenizer import Tokenizer

    f = GGUFFile(tiny_gguf)
    tok = Tokenizer.from_gguf(f)
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]
    ids = encode_chat(tok, ChatTemplate.from_gguf(f), msgs)
    ref = greedy_reference(tiny_gguf, ids, 8)
    eog = next((i for i, t in enumerate(ref) if tok.is_eog(t)), len(ref))
    s = Server(argv=["-m", "moe_gguf.cli", "serve", str(tiny_gguf), "-c", "256", "-t", "1", "--api-key", KEY])
    try:
        c = s.client()
        r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0)
        assert r.choices[0].message.content == tok.decode(ref[:eog], skip_special=True)
        assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == min(8, eog + 1)
        streamed = "".join(x.choices[0].delta.content or "" for x in
                           c.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0, stream=True))
        assert streamed == r.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="maximum context length"):
            c.completions.create(model="tiny", prompt="word " * 400)
    finally:
        s.close()


# ------------------------------------------------------------------------------------------ the web page, in a browser
@pytest.mark.slow
def test_web_chat_in_headless_chromium(server: Server) -> None:
    import shutil

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        pytest.skip("needs selenium (pip install selenium) and Debian's chromium + chromium-driver")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not browser or not driver_bin:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        d.get(server.url + "/")
        # record what the page sends, to check that it keeps the conversation
        d.execute_script(
            "window.__bodies = []; const f = window.fetch;"
            "window.fetch = (u, o) => { if (o && o.body) window.__bodies.push(JSON.parse(o.body)); return f(u, o); };"
        )
        d.find_element(By.ID, "key").send_keys(KEY)
        d.find_element(By.ID, "temp").clear()
        d.find_element(By.ID, "temp").send_keys("0")
        conv: list[dict] = []
        for turn, text in enumerate(["hello browser", "and again"]):
            d.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
            WebDriverWait(d, 30).until(
                lambda drv: len(drv.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']")) == turn + 1
            )
            assert not d.find_elements(By.CSS_SELECTOR, ".msg.error")
            conv.append({"role": "user", "content": text})
            want, _, _ = expected(chat_ids(conv), 256 - len(chat_ids(conv)))  # the page sends no max_tokens
            got = d.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")[turn].text
            assert got == want.strip() or got == want  # innerText trims trailing whitespace
            conv.append({"role": "assistant", "content": want})
            sent = d.execute_script("return window.__bodies")[-1]
            assert sent["stream"] is True and sent["messages"] == conv[:-1]
        # a wrong key shows the server's message instead of a reply
        d.find_element(By.ID, "key").clear()
        d.find_element(By.ID, "key").send_keys("nope")
        d.find_element(By.ID, "input").send_keys("x", Keys.ENTER)
        WebDriverWait(d, 30).until(lambda drv: drv.find_elements(By.CSS_SELECTOR, ".msg.error"))
        assert "API key" in d.find_element(By.CSS_SELECTOR, ".msg.error .text").text
    finally:
        d.quit()
