"""The HTTP API (FastAPI): OpenAI-compatible completions and chat, classification, the model list,
runtime adapter loading, health and metrics. Handlers validate, tokenise and hand work to the engine;
the engine thread reports back through a Channel into the handler's event loop (events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from petkit.core.errors import ConfigError, PetkitError
from petkit.serve.adapters import Forbidden
from petkit.serve.classify import ClassifyJob
from petkit.serve.decode import Sequence
from petkit.serve.errors import error_response
from petkit.serve.events import Channel, ClientGone, Events, sse
from petkit.serve.gate import Gate
from petkit.serve.protocol import (
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    LoadAdapterRequest,
    UnloadAdapterRequest,
    error_body,
    new_id,
    now,
    usage,
)
from petkit.serve.service import Service

log = logging.getLogger("petkit.serve")


def create_app(service: Service) -> FastAPI:
    config, engine, pool, metrics = service.config, service.engine, service.pool, service.metrics

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        # The engine lives exactly as long as the HTTP server: uvicorn runs this before it accepts the first
        # connection and after the last one closed on shutdown (Ctrl-C, SIGTERM).
        service.start()
        log.warning("petkit serve: %s with %d adapters, engine started", config.base_name, len(pool.known))
        yield
        service.stop()
        log.warning("petkit serve: engine stopped")

    app = FastAPI(title="petkit serve", version="1", lifespan=lifespan,
                  description="One base model, many adapters: OpenAI-compatible completions, chat and "
                              "classification, with requests for different adapters batched together.")

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return JSONResponse(error_body(400, message, where or None), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(PetkitError)
    async def petkit_error(_request, exc: PetkitError):
        return error_response(exc)

    # -- generation ---------------------------------------------------------------------------
    def require(task: str) -> None:
        if config.task != task:
            other = "/v1/classify" if config.task == "classify" else "/v1/completions or /v1/chat/completions"
            raise ConfigError(f"this server runs a {config.task} model; use {other}")

    def tokenized(texts: list[str], field: str) -> list[list[int]]:
        if not 1 <= len(texts) <= config.max_inputs:
            raise ConfigError(f"{field} takes 1 to {config.max_inputs} strings, got {len(texts)}")
        return [service.tokenizer(t)["input_ids"] for t in texts]

    def sequences(body, prompts: list[list[int]], limit: int | None, channel: Channel) -> list[Sequence]:
        body.check()
        stops = body.stops()
        out = []
        for i, ids in enumerate(prompts):
            if not ids:
                raise ConfigError("the prompt is empty (no tokens)")
            room = service.max_model_len - len(ids)
            if room < 1:
                raise ConfigError(f"the prompt has {len(ids)} tokens; this server's limit is "
                                  f"{service.max_model_len - 1} (--max-model-len {service.max_model_len})")
            wanted = limit if limit is not None else min(config.max_tokens, room)
            if wanted > config.max_tokens:
                raise ConfigError(f"max_tokens={wanted} exceeds this server's limit of {config.max_tokens}")
            if wanted > room:
                raise ConfigError(f"prompt ({len(ids)} tokens) + max_tokens ({wanted}) exceeds the context "
                                  f"limit of {service.max_model_len} tokens")
            out.append(Sequence(prompt=ids, adapter=None, max_tokens=wanted, emit=channel.sink(i),
                                temperature=body.temperature, top_p=body.top_p,
                                seed=None if body.seed is None else body.seed + i, stops=stops,
                                ignore_eos=body.ignore_eos))
        return out

    def submit_all(items, model_name: str) -> None:
        submitted = []
        try:
            for item in items:
                engine.submit(item, model_name)
                submitted.append(item)
        except BaseException:
            cancel(submitted)
            raise

    def cancel(items) -> None:
        for item in items:
            item.cancelled = True
        engine.wake()

    async def generate(http: Request, body, prompts: list[list[int]], limit, chat: bool):
        channel = Channel()
        seqs = sequences(body, prompts, limit, channel)
        submit_all(seqs, body.model)
        metrics.prompt_tokens.inc(sum(map(len, prompts)))
        ident, created = new_id("chatcmpl" if chat else "cmpl"), now()
        try:
            first = await channel.next(http)
        except ClientGone:
            cancel(seqs)
            return Response(status_code=499)
        if first[1] == "error":
            cancel(seqs)
            return error_response(first[2])
        metrics.first_token.observe(time.perf_counter() - seqs[0].arrived)
        events = Events(channel, seqs, first, http)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            stream = sse(events, ident, created, body.model, chat, include_usage, metrics, cancel)
            return StreamingResponse(stream, media_type="text/event-stream")
        try:
            texts, reasons = await events.collect()
        except ClientGone:
            cancel(seqs)
            return Response(status_code=499)
        except Exception as exc:  # noqa: BLE001 - an error event from the engine
            cancel(seqs)
            return error_response(exc)
        completion = sum(len(s.generated) for s in seqs)
        metrics.completion_tokens.inc(completion)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r,
                        "logprobs": None} for i, (t, r) in enumerate(zip(texts, reasons))]
        else:
            choices = [{"index": i, "text": t, "finish_reason": r, "logprobs": None}
                       for i, (t, r) in enumerate(zip(texts, reasons))]
        return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": body.model, "choices": choices, "usage": usage(sum(map(len, prompts)), completion)}

    @app.post("/v1/completions", summary="Continue a prompt (OpenAI completions)")
    async def completions(body: CompletionRequest, http: Request):
        require("generate")
        return await generate(http, body, tokenized(body.prompts(), "prompt"), body.max_tokens, chat=False)

    @app.post("/v1/chat/completions", summary="Answer a conversation (OpenAI chat completions)")
    async def chat_completions(body: ChatRequest, http: Request):
        require("generate")
        if not getattr(service.tokenizer, "chat_template", None):
            raise ConfigError("this model's tokenizer has no chat template; use /v1/completions")
        ids = service.tokenizer.apply_chat_template(body.rendered(), add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]
        return await generate(http, body, [list(ids)], body.limit(), chat=True)

    # -- classification ---------------------------------------------------------------------
    @app.post("/v1/classify", summary="Class probabilities of texts under an adapter (as vLLM's /classify)")
    @app.post("/classify", include_in_schema=False)
    async def classify(body: ClassifyRequest, http: Request):
        require("classify")
        ids = tokenized(body.texts(), "input")
        longest = max(map(len, ids))
        if longest > service.max_model_len:
            raise ConfigError(f"an input has {longest} tokens; this server's limit is {service.max_model_len}")
        channel = Channel()
        job = ClassifyJob(ids=ids, emit=channel.sink(0))
        submit_all([job], body.model)
        tokens = sum(map(len, ids))
        metrics.prompt_tokens.inc(tokens)
        try:
            while True:
                _, kind, payload = await channel.next(http)
                if kind == "error":
                    return error_response(payload)
                if kind == "result":
                    probs = payload
                    break
        except ClientGone:
            cancel([job])
            return Response(status_code=499)
        labels = service.labels(job.adapter, len(probs[0]))
        data = [{"index": i, "label": labels[max(range(len(p)), key=p.__getitem__)], "probs": p,
                 "num_classes": len(p)} for i, p in enumerate(probs)]
        return {"id": new_id("classify"), "object": "list", "created": now(), "model": body.model, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}

    # -- models and adapters -----------------------------------------------------------------
    @app.get("/v1/models", summary="The base model and the adapters requests can name")
    async def models():
        base = {"id": config.base_name, "object": "model", "created": service.created, "owned_by": "petkit",
                "root": service.root, "parent": None, "max_model_len": service.max_model_len}
        cards = [base] + [{"id": n, "object": "model", "created": k.created, "owned_by": "petkit",
                           "root": str(k.path), "parent": config.base_name, "max_model_len": service.max_model_len}
                          for n, k in sorted(dict(pool.known).items())]
        return {"object": "list", "data": cards}

    def require_loading() -> None:
        if not config.allow_adapter_loading:
            raise Forbidden("runtime adapter loading is off; start the server with --allow-adapter-loading "
                            "and --adapter-dir")

    @app.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
              summary="Load an adapter folder from --adapter-dir under a name (vLLM's route)")
    async def load_adapter(body: LoadAdapterRequest):
        require_loading()
        if body.load_inplace:
            raise ConfigError("load_inplace is not supported; unload the adapter, then load it again")
        path = service.resolve_load_path(body.lora_path)
        await asyncio.wrap_future(engine.call(lambda: pool.register(body.lora_name, path)))
        return f"Success: LoRA adapter '{body.lora_name}' added successfully."

    @app.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
              summary="Stop serving an adapter; requests using it finish first (vLLM's route)")
    async def unload_adapter(body: UnloadAdapterRequest):
        require_loading()
        await asyncio.wrap_future(engine.call(lambda: pool.unload(body.lora_name)))
        return f"Success: LoRA adapter '{body.lora_name}' removed successfully."

    # -- operations ----------------------------------------------------------------------------
    @app.get("/health", summary="200 while the engine runs")
    async def health():
        if engine.error is not None:
            return JSONResponse(error_body(503, f"the engine failed: {engine.error}"), status_code=503)
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus text: requests, tokens, queue, batches, adapters, latency")
    async def prometheus():
        metrics.queue_depth.set(engine.waiting)
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    routes = {r.path for r in app.routes}
    app.add_middleware(Gate, api_key=config.api_key, max_body_bytes=config.max_body_bytes, metrics=metrics,
                       routes=routes)
    return app


