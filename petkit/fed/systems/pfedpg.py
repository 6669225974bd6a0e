"""pFedPG (Yang, Wang & Wang, ICCV 2023): a server-side prompt generator gives every client its own
prompt and learns from the directions the clients moved them; task heads stay private.

    P_n = Attn(Q = W_q d_n, K = W_k P_base, V = W_v P_base) → W_o        (L prompt tokens for client n)

with a shared prompt basis P_base (L × d), one learnable descriptor d_n (L × d) per client, and
multi-head cross-attention. After a round, client n reports ΔP_n = P̃_n − P_n (its locally tuned prompt
minus the one it was sent); the server takes one optimizer step on

    Σ_n ½ ‖P_n(φ) − stopgrad(P_n + ΔP_n)‖²,   i.e.  ∇_φ = −Σ_n (∂P_n/∂φ)ᵀ ΔP_n,

which moves the generator *along* the clients' updates (the unofficial code steps against them).
``FreePrompts`` (one free prompt per client) is the degenerate generator: with SGD at lr 1 one step
sets every P_n to P̃_n exactly.

A client receives its own prompt P_n, trains it with its private task head (kept in the node's state
between rounds, never sent) for ``local_steps`` steps, and replies with ΔP_n = P̃_n − P_n only. After
each round every client scores its personal model (``petkit/fed/scoring.py``); the server keeps the
generator.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from petkit.core.errors import ConfigError

from ..checks import prompt_tuning_only
from ..local import setup, train_locally
from ..payload import State, load_trainable, trainable_state
from ..registry import FedSystem, register
from ..scoring import label_shares, personal_accuracy
from .fedavg import build_model  # the prompt (and head) on the model, as for FedAvg

HEAD_KEY = "petkit-private-head"


class PromptGenerator(nn.Module):
    def __init__(self, clients: int, length: int, width: int, heads: int = 4, seed: int = 0):
        super().__init__()
        if width % heads:
            raise ConfigError(f"the prompt width {width} must be divisible by the generator's heads ({heads})")
        g = torch.Generator().manual_seed(seed)
        self.base = nn.Parameter(torch.randn(length, width, generator=g) * 0.02)
        self.descriptors = nn.Parameter(torch.randn(clients, length, width, generator=g) * 0.02)
        with torch.random.fork_rng():  # the attention's own init from the same seed, not the global stream
            torch.manual_seed(seed)
            self.attention = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, clients: list[int]) -> torch.Tensor:
        """Prompts for the given clients: (len(clients), length, width)."""
        queries = self.descriptors[clients]
        basis = self.base.expand(len(clients), -1, -1)
        return self.attention(queries, basis, basis, need_weights=False)[0]


class FreePrompts(nn.Module):
    """One independent prompt per client (no sharing): the generator pFedPG degenerates to."""

    def __init__(self, clients: int, length: int, width: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.prompts = nn.Parameter(torch.randn(clients, length, width, generator=g) * 0.02)

    def forward(self, clients: list[int]) -> torch.Tensor:
        return self.prompts[clients]


class PromptServer:
    """The generator with its optimizer: ``prompts(clients)`` to send, ``step(clients, deltas)`` after a round."""

    def __init__(self, generator: nn.Module, lr: float = 1e-3, optimizer: str = "adam"):
        if optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.generator = generator
        make = torch.optim.AdamW if optimizer == "adam" else torch.optim.SGD
        self.optimizer = make(generator.parameters(), lr=lr, **({"weight_decay": 0.0} if optimizer == "adam" else {}))

    @torch.no_grad()
    def prompts(self, clients: list[int]) -> torch.Tensor:
        return self.generator(clients).detach().clone()

    def step(self, clients: list[int], deltas: list[torch.Tensor]) -> float:
        """One update from the clients' prompt changes ΔP_n; returns the loss before the step."""
        if len(clients) != len(deltas) or not clients:
            raise ConfigError(f"one prompt change per client is needed: {len(clients)} clients, {len(deltas)} changes")
        current = self.generator(clients)
        target = current.detach() + torch.stack([d.to(current.dtype) for d in deltas])
        loss = 0.5 * ((current - target) ** 2).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


# ------------------------------------------------------------------ the server side


class GeneratedPrompts:
    """What the server sends: each sampled node its own generated prompt (a node keeps the descriptor
    it is first given); what comes back: prompt changes ΔP_n, for one generator step per round."""

    def __init__(self, job, setup):
        length, width = dict(setup.am.named_parameters())[prompt_key(setup.am)].shape
        self.clients = job.clients
        self.generator = PromptGenerator(job.clients, length, width, heads=job.generator_heads, seed=job.seed)
        self.server = PromptServer(self.generator, lr=job.server_lr)
        self.index: dict[int, int] = {}  # node id → its descriptor

    def initial_state(self) -> State:
        return {k: v.detach().clone() for k, v in self.generator.state_dict().items()}

    def outgoing(self, nodes: list[int]) -> dict[int, State]:
        for node in sorted(nodes):
            if node not in self.index and len(self.index) == self.clients:
                raise RuntimeError(f"more nodes than the job's {self.clients} clients joined: no descriptor left")
            self.index.setdefault(node, len(self.index))
        prompts = self.server.prompts([self.index[n] for n in nodes])
        return {n: {"prompt": p} for n, p in zip(nodes, prompts)}

    def expected_reply(self, sent: State) -> State:
        return {"delta": sent["prompt"]}  # ΔP has the prompt's shape

    def aggregate(self, global_state: State, replies: list) -> tuple[State, dict]:
        loss = self.server.step([self.index[r.node] for r in replies], [r.state["delta"] for r in replies])
        return self.generator.state_dict(), {"generator_loss": loss}


def save_generator(report: dict, job, out: Path) -> Path:
    """The prompt generator, out/generator.safetensors (the heads stay with the clients)."""
    from safetensors.torch import save_file

    where = out / "generator.safetensors"
    save_file({k: v.contiguous() for k, v in report["final_state"].items()}, where,
              metadata={"petkit-job": job.to_json()})
    return where


# ------------------------------------------------------------------ the client side


def prompt_key(am: nn.Module) -> str:
    """The trainable prompt's parameter name (the other trainables are the task head)."""
    names = [n for n, p in am.named_parameters() if p.requires_grad and n.startswith("model_deltas.")]
    if len(names) != 1:
        raise ConfigError(f"pFedPG needs exactly one trainable prompt tensor, found {names}")
    return names[0]


def _load_personal(job, received: State, node_state) -> tuple[nn.Module, str, State]:
    """This client's model: the received prompt and its own head (the initial head in its first round)."""
    _, am, _, initial = setup(job)
    key = prompt_key(am)
    if set(received) != {"prompt"}:
        raise ConfigError(f"a pFedPG message carries one tensor named 'prompt', got {sorted(received)}")
    head = (dict(node_state[HEAD_KEY].to_torch_state_dict()) if HEAD_KEY in node_state
            else {k: v for k, v in initial.items() if k != key})
    load_trainable(am, {**head, key: received["prompt"]})
    return am, key, received["prompt"]


def client_round(job, partition: int, server_round: int, received: State, node_state) -> tuple[State, int, float, dict]:
    """Tune (prompt, private head) locally; returns ({"delta": ΔP}, examples, last loss, metrics)."""
    from flwr.app import ArrayRecord

    am, key, sent = _load_personal(job, received, node_state)
    loss, metrics = train_locally(job, am, partition, server_round)
    tuned = trainable_state(am)
    node_state[HEAD_KEY] = ArrayRecord({k: v for k, v in tuned.items() if k != key})
    return {"delta": tuned[key] - sent}, len(setup(job).parts[partition]), loss, metrics


def evaluate_client(job, partition: int, received: State, node_state) -> float:
    """The personalised accuracy of this client's model: the generated prompt with its private head."""
    from petkit.train import evaluate

    am, _, _ = _load_personal(job, received, node_state)
    prep, _, parts, _ = setup(job)
    per_class = evaluate(am, prep.test, prep.task, batch_size=64, per_class=True)["class_accuracy"]
    return personal_accuracy(per_class, label_shares(prep, parts[partition]))


SYSTEM = register(FedSystem(
    name="pfedpg", title="pFedPG", spec="Yang, Wang & Wang, ICCV 2023",
    summary="personalised prompts from a server-side generator; private task heads, scored on each client",
    settings=("server_lr", "generator_heads"), check=prompt_tuning_only, build_model=build_model,
    client_train=client_round, server=GeneratedPrompts,
    client_evaluate=evaluate_client, save=save_generator, keeps="generator",
))
