"""petkit serve over HTTP on 127.0.0.1, through the official `openai` client where it applies: completions,
chat, streaming, the adapter chosen per request, hot load/unload during traffic, security and bad input."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time

import httpx
import openai
import pytest
import torch

import petkit
from petkit.serve.config import ServeConfig
from petkit.serve.run import BackgroundServer
from petkit.serve.service import Service
from petkit.testing import tiny_bert, tiny_chat_tokenizer, tiny_llama
from serve_cases import lora_llama, reference

KEY = "test-key-123"
EOS_OFF = {"ignore_eos": True}  # vLLM's extension: exactly max_tokens tokens


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """a, b, c servable from the folder; spare/ and bad/ hold folders for runtime loads only."""
    root = tmp_path_factory.mktemp("adapters")
    ref = lora_llama(("a", "b", "c", "d"))
    for name in "abc":
        ref.save(root / name, names=[name])
    (root / "spare").mkdir()
    ref.save(root / "spare" / "d", names=["d"])
    bad = root / "bad"
    bad.mkdir()
    petkit.adapt(tiny_llama(seed=9), petkit.LoraConfig(r=4, targets="all-linear"), "x").save(bad / "other_base")
    ref.save(bad / "corrupt", names=["a"])
    weights = bad / "corrupt" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    return root, ref


def start(adapters, **overrides) -> BackgroundServer:
    root, _ = adapters
    settings = dict(model="tiny", adapter_dir=str(root), allow_adapter_loading=True, api_key=KEY, max_model_len=64,
                    max_tokens=32)
    settings.update(overrides)
    return BackgroundServer(Service(ServeConfig(**settings), tiny_llama().eval(), tiny_chat_tokenizer()))


@pytest.fixture(scope="module")
def server(adapters):
    background = start(adapters)
    with background as url:
        yield background, url


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[1] + "/v1", api_key=KEY, max_retries=0)


def post(server, path, body=None, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server[1] + path, json=body, headers=headers, timeout=30, **kw)


def expected(adapters, prompt_ids, adapter, n) -> str:
    _, ref = adapters
    return tiny_chat_tokenizer().decode(reference(ref, prompt_ids, adapter, n), skip_special_tokens=True)


# -- the OpenAI surface ------------------------------------------------------------------------------
def test_models_lists_the_base_and_the_adapters_with_their_parent(client):
    cards = {m.id: m for m in client.models.list().data}
    assert {"tiny", "a", "b", "c"} <= set(cards)
    assert cards["tiny"].parent is None and cards["a"].parent == "tiny"


def test_completions_follow_the_adapter_named_in_model(client, adapters):
    tok = tiny_chat_tokenizer()
    ids = tok("hello there")["input_ids"]
    for model, adapter in [("a", "a"), ("b", "b"), ("tiny", None)]:
        r = client.completions.create(model=model, prompt="hello there", max_tokens=8, temperature=0, extra_body=EOS_OFF)
        assert r.choices[0].text == expected(adapters, ids, adapter, 8), model
        assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 8
        assert r.choices[0].finish_reason == "length"


def test_chat_applies_the_template_and_streams_the_same_text(client, adapters):
    tok = tiny_chat_tokenizer()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    whole = client.chat.completions.create(model="b", messages=messages, max_tokens=10, temperature=0,
                                           extra_body=EOS_OFF)
    assert whole.choices[0].message.content == expected(adapters, ids, "b", 10)
    assert whole.usage.prompt_tokens == len(ids)
    chunks = list(client.chat.completions.create(model="b", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body=EOS_OFF))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_concurrent_requests_for_different_adapters_share_batches_and_get_their_own_answers(client, adapters, server):
    tok = tiny_chat_tokenizer()
    jobs = [(m, p) for m in ["a", "b", "c", "tiny"] for p in ["one two", "three", "four five six"]] * 2

    def ask(job):
        model, prompt = job
        return client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                         extra_body=EOS_OFF).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, jobs))
    for (model, prompt), answer in zip(jobs, answers):
        assert answer == expected(adapters, tok(prompt)["input_ids"], None if model == "tiny" else model, 12)
    metrics = httpx.get(server[1] + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    mixed = [line for line in metrics.splitlines() if line.startswith("petkit_adapters_per_batch_bucket")]
    one = next(float(line.split()[-1]) for line in mixed if 'le="1.0"' in line)
    total = next(float(line.split()[-1]) for line in mixed if 'le="+Inf"' in line)
    assert total > one  # some forwards ran rows of several adapters together


def test_seeded_sampling_is_reproducible_and_top_p_is_honoured(client):
    asks = [client.completions.create(model="a", prompt="hello", max_tokens=10, temperature=1.0, top_p=0.9, seed=3,
                                      extra_body=EOS_OFF).choices[0].text for _ in range(2)]
    assert asks[0] == asks[1]


def test_stop_strings_cut_the_text(client, adapters):
    tok = tiny_chat_tokenizer()
    free = expected(adapters, tok("hello")["input_ids"], "a", 12)
    k = next(k for k in range(2, len(free) - 1) if free.index(free[k:k + 2]) == k)  # a pair first seen at k
    r = client.completions.create(model="a", prompt="hello", max_tokens=12, temperature=0, stop=[free[k:k + 2]],
                                  extra_body=EOS_OFF)
    assert r.choices[0].text == free[:k] and r.choices[0].finish_reason == "stop"


def test_several_prompts_give_one_choice_each(client, adapters):
    tok = tiny_chat_tokenizer()
    r = client.completions.create(model="c", prompt=["one", "two three"], max_tokens=5, temperature=0, extra_body=EOS_OFF)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [expected(adapters, tok(p)["input_ids"], "c", 5) for p in ["one", "two three"]]


# -- runtime adapters --------------------------------------------------------------------------------
def test_hot_load_and_unload_during_traffic(server, adapters, client):
    stop, failures, done = threading.Event(), [], []

    def traffic():
        while not stop.is_set():
            try:
                client.completions.create(model="a", prompt="keep going", max_tokens=6, temperature=0)
                done.append(1)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                failures.append(exc)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        r = post(server, "/v1/load_lora_adapter", {"lora_name": "d", "lora_path": "spare/d"})
        assert r.status_code == 200 and "added successfully" in r.text
        tok = tiny_chat_tokenizer()
        out = client.completions.create(model="d", prompt="hey", max_tokens=6, temperature=0, extra_body=EOS_OFF)
        assert out.choices[0].text == expected(adapters, tok("hey")["input_ids"], "d", 6)
        # unload while a long request for d streams: it finishes with every token
        stream = client.completions.create(model="d", prompt="hey", max_tokens=30, temperature=0, extra_body=EOS_OFF,
                                           stream=True)
        first = next(iter(stream))
        assert post(server, "/v1/unload_lora_adapter", {"lora_name": "d"}).status_code == 200
        rest = [first, *stream]
        assert "".join(c.choices[0].text for c in rest) == expected(adapters, tok("hey")["input_ids"], "d", 30)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="d", prompt="hey", max_tokens=2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures and done
    service = server[0].service
    assert "d" not in service.model.adapters and not service.pool.users  # nothing leaked


def test_a_peft_made_adapter_loads_at_runtime(server, adapters, tmp_path):
    peft = pytest.importorskip("peft")
    root, _ = adapters
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(root / "spare" / "from_peft")
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "p", "lora_path": "spare/from_peft"}).status_code == 200
    r = post(server, "/v1/completions", {"model": "p", "prompt": "hi", "max_tokens": 3})
    assert r.status_code == 200
    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "p"}).status_code == 200


# -- security ------------------------------------------------------------------------------------------
def test_the_api_key_is_required_everywhere_but_health(server):
    url = server[1]
    assert httpx.get(url + "/health").status_code == 200
    for key in [None, "wrong-key-xyz", KEY + "x"]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        assert httpx.get(url + "/v1/models", headers=headers).status_code == 401
        assert httpx.get(url + "/metrics", headers=headers).status_code == 401
        r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "z", "lora_path": "spare/d"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
    assert "z" not in server[0].service.pool.known


def test_loads_outside_the_adapter_directory_are_forbidden_and_change_nothing(server, adapters, tmp_path):
    root, _ = adapters
    os.symlink(root / "spare" / "d", root / "spare" / "link")
    before = set(server[0].service.model.adapters), set(server[0].service.pool.known)
    for path in ["../" + root.name + "/spare/d", str(tmp_path), "spare/link", "/etc"]:
        r = post(server, "/v1/load_lora_adapter", {"lora_name": "z", "lora_path": path})
        assert r.status_code == 403, (path, r.text)
    assert (set(server[0].service.model.adapters), set(server[0].service.pool.known)) == before


def test_runtime_loading_is_off_unless_enabled(adapters):
    with start(adapters, allow_adapter_loading=False, api_key=None) as url:
        r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "z", "lora_path": "spare/d"})
        assert r.status_code == 403 and "--allow-adapter-loading" in r.json()["error"]["message"]
        assert httpx.get(url + "/v1/models").status_code == 200  # no key configured: open


# -- bad input -----------------------------------------------------------------------------------------
def test_unknown_adapter_is_404_naming_the_served_ones(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert "nope" in info.value.body["message"] and "a, b, c" in info.value.body["message"]
    assert info.value.body["code"] == 404


def test_bad_adapter_folders_are_refused_at_load_and_the_server_keeps_serving(server, client):
    for path, words in [("bad/other_base", "base weights differ"), ("bad/corrupt", "")]:
        r = post(server, "/v1/load_lora_adapter", {"lora_name": "z", "lora_path": path})
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "z", "lora_path": "nothing/here"}).status_code == 404
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "spare/d"}).status_code == 400
    assert "z" not in server[0].service.model.adapters
    assert client.completions.create(model="a", prompt="x", max_tokens=2).choices


def test_malformed_and_oversize_requests_get_400_or_413_with_the_limit(server):
    url, headers = server[1], {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    r = httpx.post(url + "/v1/completions", content=b'{"model": "a", "prompt": ', headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    r = post(server, "/v1/completions", {"model": "a", "prompt": "x " * 200, "max_tokens": 4})
    assert r.status_code == 400 and "64" in r.json()["error"]["message"]
    r = post(server, "/v1/completions", {"model": "a", "prompt": "x", "max_tokens": 33})
    assert r.status_code == 400 and "32" in r.json()["error"]["message"]
    r = post(server, "/v1/completions", {"model": "a", "prompt": "x", "max_tokens": 0})
    assert r.status_code == 400
    r = post(server, "/v1/completions", {"model": "a", "prompt": "x", "logprobs": 2})
    assert r.status_code == 400 and "logprobs" in r.json()["error"]["message"]
    r = post(server, "/v1/completions", {"model": "a", "prompt": "x" * (1 << 20)})
    assert r.status_code == 413
    r = post(server, "/v1/classify", {"model": "a", "input": "x"})
    assert r.status_code == 400 and "/v1/completions" in r.json()["error"]["message"]


def test_a_client_that_disconnects_mid_stream_leaves_the_batch(server, monkeypatch):
    url, service = server[1], server[0].service
    forward = service.runner._forward

    def slow(*args):  # 32 tokens take ~1 s, so the hang-up comes long before the end
        time.sleep(0.03)
        return forward(*args)

    monkeypatch.setattr(service.runner, "_forward", slow)
    body = {"model": "b", "prompt": "go on", "max_tokens": 32, "ignore_eos": True, "stream": True, "temperature": 0}
    with httpx.stream("POST", url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200  # the headers are sent once the first token is out
        running = list(service.runner.running)
    # leaving the block hangs up
    deadline = time.monotonic() + 10
    while (service.runner.size or service.pool.users) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service.runner.size == 0 and not service.pool.users
    assert len(running) == 1 and running[0].finish_reason == "cancelled" and len(running[0].generated) < 32


def test_a_full_queue_answers_429_with_retry_after(adapters, monkeypatch):
    background = start(adapters, max_batch=1, max_waiting=1, api_key=None)
    forward = background.service.runner._forward
    monkeypatch.setattr(background.service.runner, "_forward", lambda *a: time.sleep(0.02) or forward(*a))
    with background as url:  # each request takes > 0.6 s: the other four arrive while one runs and one waits
        body = {"model": "a", "prompt": "hello", "max_tokens": 30, "ignore_eos": True}
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: httpx.post(url + "/v1/completions", json=body, timeout=60), range(6)))
        codes = sorted(r.status_code for r in answers)
        assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "RateLimitError"


# -- classification -----------------------------------------------------------------------------------
def test_classify_routes_each_request_through_its_adapter_and_head(tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij", "good", "bad"]))
    tok = BertTokenizerFast(str(vocab))
    ref = petkit.AdaptedModel(tiny_bert(num_labels=3))
    torch.manual_seed(0)
    for name in ["pos", "neg"]:
        petkit.adapt(ref, petkit.LoraConfig(r=2, targets="all-linear"), name)
        with torch.no_grad():
            for delta in ref.deltas(name):
                if hasattr(delta, "B"):
                    delta.B.normal_(0, 0.5)
        ref.save(tmp_path / name, names=[name])
    (tmp_path / "pos" / "labels.json").write_text('{"labels": ["worse", "same", "better"]}')  # as petkit train writes it
    config = ServeConfig(model="tiny-bert", task="classify", adapters={"pos": str(tmp_path / "pos"),
                                                                        "neg": str(tmp_path / "neg")})
    with BackgroundServer(Service(config, tiny_bert(num_labels=3), tok)) as url:
        texts = ["good a b", "bad c"]
        for model, adapter in [("pos", "pos"), ("neg", "neg"), ("tiny-bert", None)]:
            r = httpx.post(url + "/v1/classify", json={"model": model, "input": texts})
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            batch = tok(texts, padding=True, return_tensors="pt")
            with torch.no_grad():
                want = torch.softmax(ref(**batch, adapter_names=[adapter] * 2).logits, -1)
            got = torch.tensor([d["probs"] for d in data])
            assert torch.allclose(got, want, atol=1e-5), model
            assert [d["num_classes"] for d in data] == [3, 3]
            names = ["worse", "same", "better"] if model == "pos" else ["LABEL_0", "LABEL_1", "LABEL_2"]
            assert [d["label"] for d in data] == [names[int(p.argmax())] for p in want]
        r = httpx.post(url + "/v1/chat/completions", json={"model": "pos", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 400


def test_a_failing_forward_fails_its_batch_and_the_server_goes_on(server, client, monkeypatch):
    runner = server[0].service.runner
    forward, fail = runner._forward, threading.Event()

    def flaky(*args):
        time.sleep(0.02)  # the stream below is still running when the test flips the switch
        if fail.is_set():
            fail.clear()
            raise RuntimeError("simulated kernel failure")
        return forward(*args)

    monkeypatch.setattr(runner, "_forward", flaky)
    fail.set()
    with pytest.raises(openai.InternalServerError, match="simulated kernel failure"):
        client.completions.create(model="a", prompt="x", max_tokens=4)
    stream = iter(client.completions.create(model="a", prompt="hello", max_tokens=30, temperature=0, stream=True,
                                            extra_body=EOS_OFF))
    assert next(stream).choices[0].text  # the headers and a first piece are out...
    fail.set()
    with pytest.raises(openai.APIError, match="simulated kernel failure"):
        list(stream)  # ...so the error arrives as an event
    assert client.completions.create(model="a", prompt="x", max_tokens=4).choices
    assert httpx.get(server[1] + "/health").status_code == 200
    assert runner.size == 0 and not server[0].service.pool.users


def test_openapi_describes_every_route(server):
    spec = httpx.get(server[1] + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/classify", "/v1/models", "/v1/load_lora_adapter",
            "/v1/unload_lora_adapter", "/health", "/metrics"} <= set(spec["paths"])
    assert "CompletionRequest" in spec["components"]["schemas"]


def test_an_empty_prompt_is_400(server):
    r = post(server, "/v1/completions", {"model": "a", "prompt": ""})
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the engine thread's death
def test_if_the_engine_itself_dies_every_request_hears_so_and_health_says_503(adapters, monkeypatch):
    background = start(adapters, api_key=None)
    with background as url:
        runner = background.service.runner

        def fatal(*args):
            raise SystemExit("engine thread killed")  # not an Exception: the per-batch handler lets it through

        monkeypatch.setattr(runner, "_forward", fatal)
        r = httpx.post(url + "/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 3}, timeout=30)
        assert r.status_code == 503 and "engine" in r.json()["error"]["message"]
        assert httpx.get(url + "/health").status_code == 503
        r = httpx.post(url + "/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 3}, timeout=30)
        assert r.status_code == 503
