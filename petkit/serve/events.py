"""From the engine thread's events to HTTP: a Channel per request carries (index, kind, payload) events
into the handler's event loop; Events iterates them; `sse` turns them into server-sent events."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request

from petkit.core.errors import PetkitError
from petkit.serve.decode import Sequence
from petkit.serve.errors import status_of
from petkit.serve.protocol import error_body, usage

DISCONNECT_POLL = 0.5  # seconds between checks that a waiting non-streaming client is still there


class Channel:
    """Events (index, kind, payload) from the engine thread into this request's event loop."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def sink(self, index: int):
        def emit(kind, payload):
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, kind, payload))
            except RuntimeError:  # the loop has closed (server shutting down): nobody is listening
                pass
        return emit

    async def next(self, http: Request | None = None):
        """The next event; polls for a client that went away (then raises ClientGone) while waiting."""
        while True:
            try:
                return await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL)
            except asyncio.TimeoutError:
                if http is not None and await http.is_disconnected():
                    raise ClientGone from None


class ClientGone(Exception):
    pass


class Events:
    """The events of a request's sequences after the first, in order; tracks which have finished."""

    def __init__(self, channel: Channel, seqs: list[Sequence], first, http: Request):
        self.channel, self.seqs, self.http = channel, seqs, http
        self.pending = [first]
        self.open = len(seqs)

    async def __aiter__(self):
        while self.open:
            index, kind, payload = self.pending.pop(0) if self.pending else await self.channel.next(self.http)
            if kind == "error":
                raise payload if isinstance(payload, BaseException) else PetkitError(str(payload))
            if kind == "done":
                self.open -= 1
            yield index, kind, payload

    async def collect(self) -> tuple[list[str], list[str]]:
        texts, reasons = [""] * len(self.seqs), [""] * len(self.seqs)
        async for index, kind, payload in self:
            if kind == "text":
                texts[index] += payload
            else:
                reasons[index] = payload
        return texts, reasons


async def sse(events: Events, ident, created, model, chat: bool, include_usage: bool, metrics, cancel):
    """Server-sent events: one chunk per text piece, a final chunk per choice with its finish_reason, the
    usage chunk (choices: []) when asked, then [DONE]. A client that goes away cancels its sequences."""
    kind_name = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices, **extra) -> str:
        return "data: " + json.dumps({"id": ident, "object": kind_name, "created": created, "model": model,
                                      "choices": choices, **extra}) + "\n\n"

    def choice(index, text=None, finish=None, role=False) -> dict:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}

    finished = False
    try:
        if chat:
            for i in range(len(events.seqs)):
                yield chunk([choice(i, role=True)])
        async for index, kind, payload in events:
            if kind == "text":
                yield chunk([choice(index, payload)])
            elif payload != "cancelled":
                yield chunk([choice(index, finish=payload)])
        completion = sum(len(s.generated) for s in events.seqs)
        metrics.completion_tokens.inc(completion)
        if include_usage:
            yield chunk([], usage=usage(sum(s.tokens for s in events.seqs), completion))
        finished = True
    except ClientGone:
        pass
    except Exception as exc:  # noqa: BLE001 - failed after the headers went out: an error event, then [DONE]
        finished = True
        yield "data: " + json.dumps(error_body(status_of(exc), str(exc))) + "\n\n"
    finally:
        if not finished:  # the client went away (or the server stops): its rows leave the batch
            cancel(events.seqs)
    if finished:
        yield "data: [DONE]\n\n"
