"""`petkit serve`: one base model, many adapters, an OpenAI-compatible HTTP server.

    petkit serve --model smollm2 --adapter-dir adapters/ --api-key $KEY

Requests name an adapter (or the base) in `model`; requests for different adapters are decoded in one
batch (continuous batching over the mixed-adapter forward). Layers, each in its own module:
protocol (request/response shapes) -> app (routes) -> service (model, tokenizer, pool, engine) ->
engine (the one model thread, bounded queue) -> decode / classify (runners) -> kv, sampling;
adapters (which adapters are servable, resident, in use); gate (API key, body cap, metrics).
"""

from petkit.serve.extra import require_serve_extra

require_serve_extra()
