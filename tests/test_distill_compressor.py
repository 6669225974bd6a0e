"""Compressor: the cost model, the genetic search, the student + tokenizer, soft-label distillation."""

from __future__ import annotations

import json
import random

import pytest
import torch

from petkit.core.errors import ConfigError
from petkit.distill.cost import TransformerShape
from petkit.distill.search import GENES, _Genetic, random_shapes, search_shape, search_space
from petkit.distill.soft_labels import distill_soft_labels, soft_label_loss, soft_targets, teacher_logits
from petkit.distill.student import build_student, load_student, save_student, train_tokenizer
from petkit.train import TrainConfig

TINY = TransformerShape(vocab_size=300, heads=2, hidden=16, intermediate=32, layers=2, seq_len=34)
TEXTS = ["a stirring , funny and finally transporting film", "the plot is dull and the acting worse",
         "a charming , warm story", "tedious , overlong and badly written", "one of the best films of the year",
         "nothing works here , not even the jokes", "funny , moving and smart", "a boring mess"] * 3


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


def code_flops(s: TransformerShape) -> int:
    """The released flops.py formula, written out independently (attention-output LayerNorm: 5 per token)."""
    h, i, n, a, v = s.hidden, s.intermediate, s.seq_len, s.heads, s.vocab_size
    block = (6 * h * h + 3 * h + 2 * h * n + 5 * n * a + 4 * n * a + n * a + 2 * h * n + 2 * h * h + h + 4 * h + h + 5
             + 2 * h * i + 8 * i + i + 2 * h * i + h + 4 * h + h + 5 * h)
    emb = 2 * h * v + 2 * h * (n + 2) + 2 * h + 5 * h + 4 * h
    head = 2 * h * h + h + 4 * h + 8 * h + 2 * h
    return n * (s.layers * block + emb + head)


# --- cost model -------------------------------------------------------------------------------------------

def test_params_match_the_instantiated_students_exactly():
    """Catches a miscounted embedding (positions, token types, LayerNorm), a missing bias, or the head
    differing from the transformers classifiers by more than the documented pooler."""
    for num_labels in (2, 5):
        roberta, bert = build_student(TINY, num_labels, "roberta"), build_student(TINY, num_labels, "bert")
        assert TINY.params("roberta", num_labels) == numel(roberta)
        assert TINY.params("bert", num_labels) == numel(bert)
    h = TINY.hidden
    assert TINY.params() - TINY.params("roberta") == h * h + h  # the code's extra pooler
    assert TransformerShape(1000, 8, 96, 64, 12).params() == 765410  # the code's 3 MB shape: 3.06 MB
    assert TransformerShape(1000, 8, 96, 64, 12).size_mb() == pytest.approx(3.06164)


def test_flops_follow_the_released_formula_up_to_the_documented_layernorm_fix():
    """Catches a dropped term (attention scores, embedding product, head) or a wrong per-token factor."""
    for shape in (TINY, TransformerShape(1000, 8, 96, 64, 12), TransformerShape(50000, 12, 768, 3040, 12)):
        assert shape.flops() - code_flops(shape) == 5 * (shape.hidden - 1) * shape.seq_len * shape.layers


def test_a_shape_with_bad_values_is_refused():
    """Catches a shape whose heads do not divide hidden (transformers fails later, obscurely) or a zero gene."""
    with pytest.raises(ConfigError, match="divisible"):
        TransformerShape(1000, 8, 100, 64, 2)
    with pytest.raises(ConfigError, match="layers must be a positive int"):
        TransformerShape(1000, 8, 96, 64, 0)
    with pytest.raises(ConfigError, match="head must be one of"):
        TINY.params("gpt")


# --- search -----------------------------------------------------------------------------------------------

def test_search_is_elitist_deduplicated_and_within_budget():
    """Catches truncation that drops the best genome, duplicates surviving the md5 check, or a result off budget."""
    result = search_shape(3, generations=60, restarts=1, seed=2)
    assert all(b >= a for a, b in zip(result.history, result.history[1:]))
    assert len(result.history) == 60
    genomes = [tuple(s.genes().values()) for s in result.population]
    assert len(set(genomes)) == len(genomes) == 50
    assert result.size_error <= 0.05
    assert result.shape in result.population


def test_search_is_deterministic_by_seed():
    """Catches use of the global RNG (results changing with unrelated random calls) or unseeded draws."""
    first = search_shape(3, generations=20, restarts=2, seed=5)
    random.seed(123)
    torch.manual_seed(123)
    again = search_shape(3, generations=20, restarts=2, seed=5)
    assert first.shape == again.shape and first.history == again.history
    other = search_shape(3, generations=20, restarts=2, seed=6)
    assert other.history != first.history


def test_search_beats_the_best_random_shape_of_the_same_size():
    """Catches a fitness with the wrong sign (minimising compute) or a search that never improves on its start."""
    result = search_shape(3, seed=0)
    randoms = random_shapes(200, 3, 0.05, seed=0)
    assert len(set(randoms)) == 200 and all(abs(s.size_mb() - 3) <= 0.15 for s in randoms)
    assert result.gflops > max(s.gflops() for s in randoms)


def test_budgets_no_shape_can_meet_get_one_clear_error():
    """Catches a search that loops forever or returns a far-off shape for an impossible budget."""
    for budget in (0.001, 1e6):
        with pytest.raises(ConfigError, match="no shape in the search space is within 5%"):
            search_shape(budget)
        with pytest.raises(ConfigError, match="no shape in the search space"):
            random_shapes(10, budget)
    with pytest.raises(ConfigError, match="budget_mb must be a positive"):
        search_shape(-3)


def test_a_narrowed_space_is_respected_and_checked():
    """Catches mutation or crossover escaping the allowed choices (e.g. a vocabulary the tokenizer cannot
    reach), a one-value gene crashing mutation, and spaces too small to fill a generation."""
    space = search_space(vocab_size=[1000, 2000], heads=8)
    result = search_shape(3, space=space, generations=30, restarts=1)
    assert all(s.vocab_size in (1000, 2000) and s.heads == 8 for s in result.population)
    with pytest.raises(ConfigError, match="unknown gene"):
        search_space(vocab=[1000])
    with pytest.raises(ConfigError, match="divisible"):
        search_space(hidden=[24], heads=[16])
    with pytest.raises(ConfigError, match="fewer than the 100 unique genomes"):
        search_shape(3, space=search_space(vocab_size=1000, heads=8, hidden=96, intermediate=[32, 64], layers=12))


def test_mutation_changes_a_suffix_of_genes_or_exactly_one():
    """Catches the code's suffix mutation and the single-gene variant being swapped or mis-indexed."""
    space = search_space()
    genome = (8, 96, 64, 12, 1000)
    for single in (False, True):
        ga = _Genetic(space, 750000, 514, random.Random(0), 0.6, "single" if single else "suffix")
        lengths = set()
        for _ in range(200):
            changed = [a != b for a, b in zip(genome, ga.mutate(genome))]
            first = changed.index(True)
            if single:
                assert sum(changed) == 1
            else:
                assert all(changed[first:])  # every gene from the locus on takes another value
            lengths.add(sum(changed))
        assert lengths == ({1} if single else set(range(1, len(GENES) + 1)))
    with pytest.raises(ConfigError, match="mutation must be one of"):
        search_shape(3, mutation="uniform")


# --- student and tokenizer --------------------------------------------------------------------------------

def test_tokenizer_respects_the_searched_vocabulary_and_encodes_for_the_model():
    """Catches a tokenizer larger than the embedding (index errors), or special ids the model does not expect."""
    bpe = train_tokenizer(TEXTS, 300, "bpe")
    assert len(bpe) <= 300 and bpe.pad_token_id == 1 and bpe.bos_token_id == 0
    ids = bpe("a charming film")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and bpe.decode(ids, skip_special_tokens=True).strip() == "a charming film"
    wp = train_tokenizer(TEXTS, 120, "wordpiece")
    assert len(wp) <= 120 and wp.pad_token_id == 0 and wp("A boring mess")["input_ids"][0] == wp.cls_token_id
    with pytest.raises(ConfigError, match="at least 261"):
        train_tokenizer(TEXTS, 200, "bpe")
    with pytest.raises(ConfigError, match="alphabet"):
        train_tokenizer(TEXTS, 10, "wordpiece")


def test_saved_student_reloads_with_identical_outputs(tmp_path):
    """Catches a folder that does not reload (missing config, tokenizer specials), weights lost on the way,
    or a pickle written instead of safetensors."""
    tok = train_tokenizer(TEXTS, 300, "bpe", max_length=32)
    model = build_student(TINY, 2, "roberta", seed=0).eval()
    size = save_student(tmp_path / "s", model, tok, TINY)
    assert size == (tmp_path / "s" / "model.safetensors").stat().st_size
    assert not list((tmp_path / "s").glob("*.bin"))
    again, tok2, shape = load_student(tmp_path / "s")
    assert shape == TINY and tok2("a boring mess")["input_ids"] == tok("a boring mess")["input_ids"]
    batch = tok(TEXTS[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)
    assert json.loads((tmp_path / "s" / "compressor.json").read_text())["vocab_size"] == 300


def test_a_mismatched_tokenizer_is_refused_before_anything_is_written(tmp_path):
    """Catches a student saved with a tokenizer whose ids overflow its embedding (it would fail at first use)."""
    tok = train_tokenizer(TEXTS * 3, 400, "bpe")
    small = TransformerShape(vocab_size=280, heads=2, hidden=16, intermediate=32, layers=1, seq_len=34)
    with pytest.raises(ConfigError, match="do not belong together"):
        save_student(tmp_path / "s", build_student(small, 2), tok, small)
    assert not (tmp_path / "s").exists()


# --- soft-label distillation ------------------------------------------------------------------------------

def test_soft_label_loss_is_zero_at_the_teacher_and_scaled_by_t_squared():
    """Catches KL in the wrong direction, a missing T², or gradient flowing into the teacher's logits."""
    teacher = torch.randn(6, 3, requires_grad=True)
    student = teacher.detach().clone().requires_grad_()
    loss = soft_label_loss(student, teacher)
    assert loss.abs() < 1e-6
    loss.backward()
    assert student.grad.abs().max() < 1e-6 and teacher.grad is None
    other = torch.randn(6, 3)
    p, q = teacher.detach().softmax(-1), other.softmax(-1)
    assert torch.allclose(soft_label_loss(other, teacher), (p * (p.log() - q.log())).sum(-1).mean(), atol=1e-6)
    p2, q2 = (teacher.detach() / 2).softmax(-1), (other / 2).softmax(-1)
    assert torch.allclose(soft_label_loss(other, teacher, 2.0), 4 * (p2 * (p2.log() - q2.log())).sum(-1).mean(),
                          atol=1e-6)
    with pytest.raises(ConfigError, match="temperature"):
        soft_label_loss(other, teacher, 0.0)


def test_double_softmax_reproduces_the_codes_flattened_targets():
    """Catches the code's behaviour (softmax over stored probabilities) leaking into the default, or missing."""
    logits = torch.tensor([[10.0, -10.0], [-3.0, 3.0]])
    assert torch.allclose(soft_targets(logits), logits.softmax(-1))
    flat = soft_targets(logits, double_softmax=True)
    assert flat.min() > 0.26 and flat.max() < 0.74


def test_distillation_learns_the_teacher_and_leaves_it_frozen():
    """Catches the teacher being trained or left in train mode, and a student that does not move toward it."""
    tok = train_tokenizer(TEXTS, 300, "bpe")
    teacher = build_student(TINY, 2, seed=1).train()
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    examples = [{"text": t} for t in TEXTS]
    logits = teacher_logits(teacher, tok, examples, max_length=32)
    assert teacher.training and logits.shape == (len(TEXTS), 2)
    assert all(torch.equal(frozen[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    torch.manual_seed(0)
    logits = (torch.randn(8, 2) * 3).repeat(3, 1)  # one target per distinct text, sharper than a random teacher's
    student = build_student(TINY, 2, seed=2)
    before = soft_label_loss(teacher_logits(student, tok, examples), logits)
    cfg = TrainConfig(lr=1e-2, epochs=15, batch_size=8, warmup=0.1)
    result = distill_soft_labels(student, tok, examples, logits, cfg)
    after = soft_label_loss(teacher_logits(student, tok, examples), logits)
    assert after < 0.25 * before, (before, after)
    assert result.steps == 15 * 3


def test_bad_distillation_inputs_are_refused_and_the_student_is_unchanged():
    """Catches logits that do not line up with the examples or classes being trained on silently."""
    tok = train_tokenizer(TEXTS, 300, "bpe")
    student = build_student(TINY, 2, seed=0)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    examples = [{"text": t} for t in TEXTS]
    with pytest.raises(ConfigError, match="one row of teacher logits per example"):
        distill_soft_labels(student, tok, examples, torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="3 classes and the student 2"):
        distill_soft_labels(student, tok, examples, torch.zeros(len(TEXTS), 3))
    with pytest.raises(ConfigError, match="no unlabelled examples"):
        distill_soft_labels(student, tok, [], torch.zeros(0, 2))
    assert all(torch.equal(start[k], v) for k, v in student.state_dict().items())
