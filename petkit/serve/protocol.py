"""Request bodies and response shapes of the OpenAI-compatible API, as vLLM serves it (so clients written
for vLLM work unchanged): `model` names the base or an adapter; errors are {"error": {message, type,
param, code}} with the HTTP status as an integer `code` (vLLM's choice; OpenAI puts a string there).
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from petkit.core.errors import ConfigError

ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
               404: "NotFoundError", 413: "RequestTooLargeError", 429: "RateLimitError",
               500: "InternalServerError", 503: "ServiceUnavailableError"}


class Request(BaseModel):
    # OpenAI clients send fields petkit does not use (user, metadata ...): accepted and ignored,
    # except those that would change the output (checked in `unsupported`).
    model_config = ConfigDict(extra="allow")

    def unsupported(self, defaults: dict) -> None:
        extra = self.model_extra or {}
        for field, neutral in defaults.items():
            value = getattr(self, field, None) if field in type(self).model_fields else extra.get(field)
            if value is not None and value != neutral:
                raise ConfigError(f"{field}={value!r} is not supported by petkit serve (only {neutral!r})")


class StreamOptions(BaseModel):
    include_usage: bool = False


class Sampled(Request):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: decode max_tokens tokens whatever comes (load tests)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ConfigError("stop takes up to 4 non-empty strings")
        return stops

    def check(self) -> None:
        self.unsupported({"n": 1, "best_of": 1, "echo": False, "logprobs": None, "top_logprobs": None,
                          "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": None, "suffix": None,
                          "tools": None, "response_format": None})


class CompletionRequest(Sampled):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def rendered(self) -> list[dict]:
        # "developer" is OpenAI's new name for the system role; chat templates know "system"
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class ClassifyRequest(Request):
    model: str
    input: str | list[str]

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class LoadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadAdapterRequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


# -- responses -------------------------------------------------------------------------------------
def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param, "code": status}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def now() -> int:
    return int(time.time())
