"""Property-based fuzzing of the adapter loaders (petkit and PEFT formats).

Valid adapter folders are built once; hypothesis mutates copies of them (bytes of the safetensors
file, its JSON header, the tensors in it, adapter_config.json, the files themselves). Every case
must end in a working model or a deliberate `petkit.PetkitError` (never another exception, never a
catch-all wrap of one), fast and without large allocations, and a failed load leaves the model
exactly as it was.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification  # noqa: E402

import petkit  # noqa: E402
from petkit.core.files import describe  # noqa: E402

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
IDS = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(0))
RSS_BUDGET_MB = 300  # a header claiming terabytes must not turn into an allocation


def fuzz(n: int):
    return settings(max_examples=n, deadline=timedelta(seconds=3), database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def tiny_bert(seed: int = 0):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                     num_labels=2, max_position_embeddings=16, attn_implementation="eager")
    return BertForSequenceClassification(cfg).eval()


def _trained(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB




# -- valid folders, built once ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    import peft

    root = tmp_path_factory.mktemp("valid")
    out = {}
    am = petkit.adapt(tiny_bert(), petkit.LoraConfig(r=4, alpha=8, targets=["query", "value"], rank_pattern={"value": 2}))
    petkit.adapt(am, petkit.IA3Config(targets=["key", "value", "output.dense"], feedforward=["output.dense"]), name="ia3")
    for n in am.adapters:
        _trained(am.adapter_parameters(n).values())
    am.save(root / "petkit")
    out["petkit"] = root / "petkit"

    am = petkit.adapt(tiny_bert(), petkit.DoraConfig(r=2, targets=["query", "key"]))
    _trained(am.trainable_parameters())
    am.save(root / "peft_from_petkit", format="peft")  # carries petkit's fingerprint in the metadata
    out["peft_from_petkit"] = root / "peft_from_petkit"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                              use_rslora=True, rank_pattern={"query": 2},
                                                              task_type="SEQ_CLS"))
        _trained(p for p in pm.parameters() if p.requires_grad)
        pm.save_pretrained(root / "peft")
        pm = peft.get_peft_model(tiny_bert(), peft.IA3Config(target_modules=["key", "value", "output.dense"],
                                                             feedforward_modules=["output.dense"], task_type="SEQ_CLS"))
        _trained(p for p in pm.parameters() if p.requires_grad)
        pm.save_pretrained(root / "peft_ia3")
    out["peft"], out["peft_ia3"] = root / "peft", root / "peft_ia3"
    return out


class Target:
    """One model shared by all examples; every example must leave it as it found it."""

    def __init__(self):
        self.model = tiny_bert()
        self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.grad = {n: p.requires_grad for n, p in self.model.named_parameters()}
        with torch.no_grad():
            self.logits = self.model(input_ids=IDS).logits

    def assert_unchanged(self):
        assert not any(hasattr(m, "deltas") for m in self.model.modules()), "petkit wrappers were left behind"
        state = self.model.state_dict()
        assert state.keys() == self.state.keys(), "the model's parameter names changed"
        assert all(torch.equal(state[k], v) for k, v in self.state.items()), "base weights changed"
        assert {n: p.requires_grad for n, p in self.model.named_parameters()} == self.grad
        with torch.no_grad():
            assert torch.equal(self.model(input_ids=IDS).logits, self.logits)

    def restore(self, am):
        for n in list(am.adapters):
            am.delete(n)
        with torch.no_grad():  # a full fine-tuning adapter wrote into the base itself
            self.model.load_state_dict(self.state)
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.grad[n])


@pytest.fixture(scope="module")
def target():
    return Target()


def check(target: Target, folder: Path) -> str:
    """Load the (mutated) folder; return "ok" or the error class name, asserting the contract."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown config keys are warned about, by design
        try:
            info = describe(folder)
            assert isinstance(info, dict)
        except petkit.PetkitError:
            pass
        try:
            am = petkit.load(target.model, folder)
        except petkit.PetkitError as exc:
            # A deliberate error, not the loader's last-resort wrap of an exception nobody expected.
            assert exc.__cause__ is None, f"unexpected {type(exc.__cause__).__name__}: {exc.__cause__}"
            msg = str(exc)
            assert msg and "\n" not in msg and len(msg) < 1000, msg
            target.assert_unchanged()
            return type(exc).__name__
    try:
        assert isinstance(am, petkit.AdaptedModel) and am.adapters
        with torch.no_grad():
            assert am(input_ids=IDS).logits.shape == target.logits.shape
    finally:
        target.restore(am)
    target.assert_unchanged()
    return "ok"


def _copy(folders, which: str, tmp: str) -> Path:
    dst = Path(tmp) / "adapter"
    shutil.copytree(folders[which], dst)
    return dst


KINDS = ["petkit", "peft_from_petkit", "peft", "peft_ia3"]


@pytest.fixture(scope="module", autouse=True)
def rss_budget():
    start = _peak_rss_mb()
    yield
    grown = _peak_rss_mb() - start
    assert grown < RSS_BUDGET_MB, f"peak RSS grew by {grown:.0f} MB while loading fuzzed files"


def test_valid_folders_load(folders, target):
    for kind in KINDS:
        assert check(target, folders[kind]) == "ok", kind


# -- 1. raw bytes of the safetensors file ------------------------------------------------------------

def _lengths(raw: bytes) -> list[int]:
    n = struct.unpack("<Q", raw[:8])[0]
    return [0, 1, 7, 8, n - 1, n + 1, len(raw) - 8, len(raw) - 7, len(raw), len(raw) + 1, 2**31, 2**32, 2**63,
            2**64 - 1]


byte_edits = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("overwrite"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("header_length"), st.integers(0, 13) | st.integers(0, 2**64 - 1)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 64)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
)


def mutate_bytes(raw: bytes, edit) -> bytes:
    op, *args = edit
    at = lambda f: min(int(f * len(raw)), len(raw) - 1)  # noqa: E731
    if op == "truncate":
        return raw[: int(args[0] * len(raw))]
    if op == "overwrite":
        buf = bytearray(raw)
        for f, b in args[0]:
            buf[at(f)] = b if buf[at(f)] != b else b ^ 0xFF
        return bytes(buf)
    if op == "header_length":
        choice = args[0]
        n = _lengths(raw)[choice] if choice < 14 else choice
        return struct.pack("<Q", n % 2**64) + raw[8:]
    if op == "insert":
        return raw[: at(args[0])] + args[1] + raw[at(args[0]):]
    if op == "delete":
        return raw[: at(args[0])] + raw[at(args[0]) + args[1]:]
    return raw + args[0]


def _bytes_case(folders, target, kind, edit):
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, kind, tmp)
        path = folder / WEIGHTS
        path.write_bytes(mutate_bytes(path.read_bytes(), edit))
        check(target, folder)


@fuzz(250)
@given(kind=st.sampled_from(KINDS), edit=byte_edits)
def test_fuzz_weight_bytes(folders, target, kind, edit):
    _bytes_case(folders, target, kind, edit)


@pytest.mark.slow
@fuzz(5000)
@given(kind=st.sampled_from(KINDS), edit=byte_edits)
def test_fuzz_weight_bytes_slow(folders, target, kind, edit):
    _bytes_case(folders, target, kind, edit)


# -- 2. the JSON header inside the safetensors file ----------------------------------------------------

INTERESTING = [0, -1, 1, 2, 3, 4, 8, 10**9, 2**31, 2**40, 2**63, 2**64, -(2**63), 1.5, float("nan"), float("inf"),
               "", "8", "F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "C64", "lora",
               "dora", "ia3", "full", "probe", "bitfit", "bogus", "LORA", "IA3", "PROMPT_TUNING", "petkit", "pissa",
               "re:(", "re:.*", "all-linear", "query", "classifier", True, False, None, [], {}, ["query"], [2**40, 2**40]]
leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                   st.text(max_size=12), st.sampled_from(INTERESTING))
json_values = st.recursive(leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)
shapes = st.lists(st.integers(0, 64) | st.sampled_from([-1, 2**31, 2**40, 2**62]), max_size=4)
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "C64", "X"]


def _split(raw: bytes):
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8: 8 + n]), raw[8 + n:]


def _join(header, data: bytes, pad: bool = True) -> bytes:
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


@st.composite
def header_edits(draw):
    op = draw(st.sampled_from(["dtype", "shape", "offsets", "drop_field", "entry", "rename", "metadata", "tensor_bomb",
                               "extra", "whole", "unpadded"]))
    return op, draw(st.integers(0, 10**6)), draw(json_values), draw(shapes), draw(st.sampled_from(DTYPES)), \
        draw(st.tuples(st.integers(-5, 2**40), st.integers(-5, 2**40))), draw(st.text(max_size=20))


def mutate_header(raw: bytes, edit) -> bytes:
    op, pick, value, shape, dtype, offsets, name = edit
    header, data = _split(raw)
    keys = sorted(k for k in header if k != "__metadata__")
    key = keys[pick % len(keys)]
    entry = header[key]
    if op == "dtype":
        entry["dtype"] = dtype
    elif op == "shape":
        entry["shape"] = shape
    elif op == "offsets":
        entry["data_offsets"] = list(offsets)
    elif op == "drop_field":
        entry.pop(sorted(entry)[pick % len(entry)])
    elif op == "entry":
        header[key] = value
    elif op == "rename":
        header[name or key + "x"] = header.pop(key)
    elif op == "metadata":
        header["__metadata__"] = value
    elif op == "tensor_bomb":  # claims terabytes backed by a few bytes
        entry.update(dtype="F32", shape=[2**20, 2**20], data_offsets=[0, 2**42])
    elif op == "extra":
        header[name or "extra"] = {"dtype": dtype, "shape": shape, "data_offsets": list(offsets)}
    elif op == "whole":
        header = value
    elif op == "unpadded":
        return _join(header, data, pad=False)
    return _join(header, data)


def _header_case(folders, target, kind, edit):
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, kind, tmp)
        path = folder / WEIGHTS
        path.write_bytes(mutate_header(path.read_bytes(), edit))
        check(target, folder)


@fuzz(200)
@given(kind=st.sampled_from(KINDS), edit=header_edits())
def test_fuzz_weight_header(folders, target, kind, edit):
    _header_case(folders, target, kind, edit)


@pytest.mark.slow
@fuzz(4000)
@given(kind=st.sampled_from(KINDS), edit=header_edits())
def test_fuzz_weight_header_slow(folders, target, kind, edit):
    _header_case(folders, target, kind, edit)


# -- 3. the tensors themselves ---------------------------------------------------------------------------

TORCH_DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int32, torch.int64, torch.uint8,
                torch.bool]


@st.composite
def tensor_edits(draw):
    op = draw(st.sampled_from(["rename", "drop", "duplicate", "dtype", "reshape", "values", "swap_prefix"]))
    return (op, draw(st.integers(0, 10**6)), draw(st.text(max_size=30)), draw(st.sampled_from(TORCH_DTYPES)),
            draw(st.lists(st.integers(0, 9), min_size=0, max_size=3)),
            draw(st.sampled_from([float("nan"), float("inf"), 0.0, 1e30, -1.0])))


def mutate_tensors(path: Path, edit) -> None:
    op, pick, name, dtype, shape, value = edit
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    keys = sorted(tensors)
    key = keys[pick % len(keys)]
    if op == "rename":
        tensors[name if name and name != key else key + ".x"] = tensors.pop(key)
    elif op == "drop":
        tensors.pop(key)
    elif op == "duplicate":
        tensors[name or key + "2"] = tensors[key].clone()
    elif op == "dtype":
        tensors[key] = tensors[key].to(dtype)
    elif op == "reshape":
        tensors[key] = torch.zeros(shape)
    elif op == "values":
        tensors[key] = torch.full_like(tensors[key], value)
    elif op == "swap_prefix":  # keys that still parse, but name another module / adapter
        other = keys[(pick + 1) % len(keys)]
        tensors[key], tensors[other] = tensors[other], tensors[key]
    save_file(tensors, str(path), metadata=metadata)


def _tensor_case(folders, target, kind, edit):
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, kind, tmp)
        mutate_tensors(folder / WEIGHTS, edit)
        check(target, folder)


@fuzz(150)
@given(kind=st.sampled_from(KINDS), edit=tensor_edits())
def test_fuzz_tensors(folders, target, kind, edit):
    _tensor_case(folders, target, kind, edit)


@pytest.mark.slow
@fuzz(3000)
@given(kind=st.sampled_from(KINDS), edit=tensor_edits())
def test_fuzz_tensors_slow(folders, target, kind, edit):
    _tensor_case(folders, target, kind, edit)


# -- 4. adapter_config.json, field by field ---------------------------------------------------------------

def _paths(node, prefix=()):
    """Every position in a JSON document, as a tuple of keys/indices."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def mutate_config_field(config: dict, data) -> dict:
    paths = [p for p in _paths(config) if p]
    path = data.draw(st.sampled_from(paths), label="field")
    parent = config
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    op = data.draw(st.sampled_from(["set", "set", "set", "delete", "rename", "add_unknown"]), label="op")
    if op == "set":
        parent[last] = data.draw(json_values, label="value")
    elif op == "delete":
        parent.pop(last)
    elif op == "rename" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=12), label="new name")] = parent.pop(last)
    elif isinstance(parent, dict):
        parent[data.draw(st.text(min_size=1, max_size=12), label="unknown key")] = data.draw(json_values, label="value")
    else:
        parent.append(data.draw(json_values, label="value"))
    return config


def _config_case(folders, target, kind, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, kind, tmp)
        config = mutate_config_field(json.loads((folder / CONFIG).read_text()), data)
        (folder / CONFIG).write_text(json.dumps(config))
        check(target, folder)


@fuzz(250)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_fuzz_config_fields(folders, target, kind, data):
    _config_case(folders, target, kind, data)


@pytest.mark.slow
@fuzz(5000)
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_fuzz_config_fields_slow(folders, target, kind, data):
    _config_case(folders, target, kind, data)


# -- 5. adapter_config.json as text -----------------------------------------------------------------------

config_texts = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(st.just("nested"), st.integers(1, 200_000)),
    st.tuples(st.just("long_int"), st.integers(1, 100_000)),
)


def mutate_config_text(text: str, edit) -> bytes:
    op, arg = edit
    if op == "truncate":
        return text[: int(arg * len(text))].encode()
    if op == "json":
        return json.dumps(arg).encode()
    if op == "bytes":
        return arg
    if op == "nested":
        return ("[" * arg + "]" * arg).encode()
    return ('{"format": "petkit", "r": ' + "9" * arg + "}").encode()


def _text_case(folders, target, kind, edit):
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, kind, tmp)
        (folder / CONFIG).write_bytes(mutate_config_text((folder / CONFIG).read_text(), edit))
        check(target, folder)


@fuzz(100)
@given(kind=st.sampled_from(KINDS), edit=config_texts)
def test_fuzz_config_text(folders, target, kind, edit):
    _text_case(folders, target, kind, edit)


@pytest.mark.slow
@fuzz(2000)
@given(kind=st.sampled_from(KINDS), edit=config_texts)
def test_fuzz_config_text_slow(folders, target, kind, edit):
    _text_case(folders, target, kind, edit)


# -- 6. the files themselves -----------------------------------------------------------------------------

FILE_OPS = ["delete", "empty", "directory", "swap"]


def _files_case(folders, target, kind, ops):
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, kind, tmp)
        for op, name in ops:
            path = folder / name
            other = folder / (CONFIG if name == WEIGHTS else WEIGHTS)
            if op == "delete" and path.is_file():
                path.unlink()
            elif op == "empty" and path.is_file():
                path.write_bytes(b"")
            elif op == "directory" and path.is_file():
                path.unlink()
                path.mkdir()
            elif op == "swap" and path.is_file() and other.is_file():
                a, b = path.read_bytes(), other.read_bytes()
                path.write_bytes(b)
                other.write_bytes(a)
        check(target, folder)


@fuzz(60)
@given(kind=st.sampled_from(KINDS),
       ops=st.lists(st.tuples(st.sampled_from(FILE_OPS), st.sampled_from([CONFIG, WEIGHTS])), min_size=1, max_size=3))
def test_fuzz_files(folders, target, kind, ops):
    _files_case(folders, target, kind, ops)


def test_missing_folder_is_a_clean_error(target, tmp_path):
    with pytest.raises(petkit.AdapterFileError, match="does not exist"):
        petkit.load(target.model, tmp_path / "nope")
    target.assert_unchanged()


# -- targeted cases hypothesis might take long to find -------------------------------------------------------

def test_header_claiming_terabytes_does_not_allocate(folders, target):
    start = _peak_rss_mb()
    for kind in KINDS:
        with tempfile.TemporaryDirectory() as tmp:
            folder = _copy(folders, kind, tmp)
            path = folder / WEIGHTS
            raw = path.read_bytes()
            header, data = _split(raw)
            for entry in (v for k, v in header.items() if k != "__metadata__"):
                entry.update(dtype="F32", shape=[2**20, 2**20], data_offsets=[0, 2**42])
            path.write_bytes(_join(header, data))
            assert check(target, folder) == "AdapterFileError"
            path.write_bytes(struct.pack("<Q", 2**63) + raw[8:])
            assert check(target, folder) == "AdapterFileError"
    assert _peak_rss_mb() - start < 100


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rank", [10**6, 10**9, 2**62])
def test_huge_rank_in_config_is_refused_before_allocating(folders, target, kind, rank):
    start = _peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        folder = _copy(folders, kind, tmp)
        config = json.loads((folder / CONFIG).read_text())
        if kind == "petkit":
            config["adapters"]["default"]["config"]["r"] = rank
            config["adapters"]["default"]["config"]["method"] = "dora"  # DoRA initialises its factors even when loading
        else:
            config["r"] = rank
            config["rank_pattern"] = {"query": rank}
        (folder / CONFIG).write_text(json.dumps(config))
        want = "ok" if kind == "peft_ia3" else "AdapterFileError"  # IA3 has no rank: PEFT ignores those keys
        assert check(target, folder) == want
    assert _peak_rss_mb() - start < 100
