"""The record formats of supervised fine-tuning (SFT), detected from their fields.

- ``prompt_completion``: ``{"prompt": str, "completion": str}``; the loss is on the completion.
- ``messages``: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (a chat); the loss is on every
  assistant turn.
- ``alpaca``: ``{"instruction": str, "input"?: str, "output": str}``; the instruction (and input) is
  the prompt and the output the completion.

Other fields are kept and ignored (the instruction tasks carry ``label`` for stratified sampling).
"""

from __future__ import annotations

from collections.abc import Sequence

from petkit.core.errors import ConfigError

# Checked in this order: the first whose fields a record has is its format.
FORMATS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
}
ROLES = ("system", "user", "assistant", "tool")


def _accepted() -> str:
    return "; ".join(f"{name} ({' + '.join(fields)})" for name, fields in FORMATS.items())


def record_format(record) -> str | None:
    """The format of one record, or None when it has no format's fields."""
    if not isinstance(record, dict):
        return None
    return next((name for name, fields in FORMATS.items() if all(f in record for f in fields)), None)


def detect_format(records: Sequence[dict]) -> str:
    """The one SFT format every record follows: ``messages``, ``prompt_completion`` or ``alpaca``.

    A record without the fields of any format, or records of mixed formats, is a ConfigError that
    names the record, the fields it has and the formats accepted.
    """
    if not records:
        raise ConfigError("no records: an SFT dataset needs at least one example")
    first = record_format(records[0])
    for i, record in enumerate(records):
        found = record_format(record)
        if found is None:
            have = sorted(record) if isinstance(record, dict) else type(record).__name__
            hint = " (plain 'text' is language modelling: use lm_blocks)" if have == ["text"] else ""
            raise ConfigError(f"record {i} is not an SFT example: it has fields {have}{hint}. "
                              f"Accepted formats: {_accepted()}")
        if found != first:
            raise ConfigError(f"records mix formats: record 0 is {first}, record {i} is {found}; use one format")
    return first


def prompt_completion(record: dict, index: int, plain: bool) -> tuple[str, str]:
    """(prompt, completion) of a prompt_completion or alpaca record.

    Alpaca's prompt is the instruction, then the input after a blank line. Rendered as plain text
    (no chat template) it gets the classic Alpaca headings so the model sees where the answer starts.
    """
    if "prompt" in record:
        prompt, completion = record["prompt"], record["completion"]
    else:
        instruction, extra, completion = record["instruction"], record.get("input") or "", record["output"]
        _check_text(instruction, "instruction", index)
        _check_text(extra, "input", index)
        if plain:
            prompt = f"### Instruction:\n{instruction}\n\n" + (f"### Input:\n{extra}\n\n" if extra.strip() else "")
            prompt += "### Response:\n"
        else:
            prompt = instruction + (f"\n\n{extra}" if extra.strip() else "")
    _check_text(prompt, "prompt", index)
    _check_text(completion, "completion", index)
    if not completion.strip():
        raise ConfigError(f"example {index} has an empty completion: there is nothing to learn from it")
    return prompt, completion


def as_messages(record: dict, index: int) -> list[dict]:
    """The validated chat of a messages record (roles known, contents text, at least one non-empty assistant turn)."""
    messages = record["messages"]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ConfigError(f"example {index}: 'messages' must be a non-empty list of {{role, content}}, got {messages!r}")
    for turn, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConfigError(f"example {index}, message {turn}: expected {{'role', 'content'}}, got {m!r}")
        if m["role"] not in ROLES:
            raise ConfigError(f"example {index}, message {turn}: unknown role {m['role']!r} (known: {', '.join(ROLES)})")
        _check_text(m["content"], f"message {turn} content", index)
        if m["role"] == "assistant" and not m["content"].strip():
            raise ConfigError(f"example {index}, message {turn}: empty assistant turn: there is nothing to learn from it")
    if not any(m["role"] == "assistant" for m in messages):
        raise ConfigError(f"example {index} has no assistant turn: there is nothing to learn from it")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _check_text(value, what: str, index: int) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"example {index}: {what} must be text, got {type(value).__name__} {value!r}")
