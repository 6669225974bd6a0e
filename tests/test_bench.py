"""`petkit bench` end to end on a tiny model folder and two tiny CSV tasks (seconds, no real weights)."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest

import petkit
from petkit.bench import MIN_STEPS, RESULTS_NAME, BenchConfig, Results, run_bench
from petkit.bench.results import key_of
from petkit.cli.main import main
from petkit.core.errors import ConfigError
from petkit.testing import tiny_bert, tiny_llama, tiny_tokenizer

# Fields that depend only on the data, seed and learning rate (not on timing or memory).
DETERMINISTIC = ("status", "dev", "test", "trainable_params", "adapter_bytes")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The bare tiny encoder, so each task gets a classification head of its own size."""
    folder = tmp_path_factory.mktemp("tiny-encoder")
    tiny_bert().bert.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Two toy tasks: sentiment words (2 labels) and topic words (3 labels)."""
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("tasks")
    paths = []
    for name, words in (("sentiment", {"pos": "good great fine nice", "neg": "bad awful poor sad"}),
                        ("topic", {"pets": "cat dog fish", "sky": "sun moon star", "color": "red blue green"})):
        path = folder / f"{name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            for _ in range(100):
                label = rng.choice(sorted(words))
                w.writerow([" ".join(rng.choices(words[label].split(), k=4)), label])
        paths.append(str(path))
    return tuple(paths)


def bench_config(tiny_folder, tasks, output, **changes) -> BenchConfig:
    # extend=0: the grid as given, so the run counts below are fixed (the search past an edge has its own tests)
    settings = dict(model=tiny_folder, tasks=tasks, methods=("lora", "bitfit"), seeds=2, steps=MIN_STEPS,
                    batch_size=8, max_length=24, max_train=None, max_eval=None, isolate=False, extend=0,
                    output=str(output))
    return BenchConfig(**{**settings, **changes})


def read_records(output) -> list[dict]:
    lines = (output / RESULTS_NAME).read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "header"
    return [json.loads(line) for line in lines[1:]]


@pytest.fixture(scope="module")
def reference(tiny_folder, tasks, tmp_path_factory):
    """An uninterrupted 2-method x 2-task x 2-seed grid (each method's grid has 2 learning rates)."""
    output = tmp_path_factory.mktemp("reference")
    board = run_bench(bench_config(tiny_folder, tasks, output), progress=False)
    return output, board


def test_grid_writes_results_leaderboard_and_plots(reference, tasks):
    output, board = reference
    records = read_records(output)
    # per (method, task): 2 learning rates on seed 0, then seed 1 at the chosen rate
    assert len(records) == 2 * 2 * 3 and all(r["status"] == "ok" for r in records)
    assert {(r["method"], r["task"]) for r in records} == {(m, t) for m in ("lora", "bitfit") for t in tasks}
    assert len({key_of(r) for r in records}) == len(records)
    for r in records:
        assert r["trainable_params"] > 0 and r["adapter_bytes"] > 0 and r["step_s"] > 0
        assert r["inference"]["unmerged_ratio"] > 0 and r["inference"]["merge_max_abs_diff"] < 1e-4

    markdown = (output / "leaderboard.md").read_text()
    assert "sentiment" in markdown and "topic" in markdown and "`lora`" in markdown and "`bitfit`" in markdown
    assert "Ordered by Borda count" in markdown and "| Borda | Kemeny |" in markdown and "## Protocol" in markdown
    for png in ("accuracy_vs_params.png", "memory_time.png", "heatmap.png"):
        assert (output / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((output / "leaderboard.json").read_text())
    assert [r["method"] for r in saved["rows"]] == [r["method"] for r in board.rows]
    assert set(saved["rankings"]) == {"mean", "borda", "kemeny"}


def test_rerun_skips_everything_done(reference, tiny_folder, tasks):
    output, _ = reference
    before = (output / RESULTS_NAME).read_text()

    def no_new_runs(record):
        raise AssertionError(f"re-ran {key_of(record)}")

    run_bench(bench_config(tiny_folder, tasks, output), progress=False, on_record=no_new_runs)
    assert (output / RESULTS_NAME).read_text() == before


def test_interrupted_bench_resumes_to_the_same_records(reference, tiny_folder, tasks, tmp_path):
    class Stop(Exception):
        pass

    seen = []

    def stop_after_five(record):
        seen.append(record)
        if len(seen) == 5:
            raise Stop

    config = bench_config(tiny_folder, tasks, tmp_path)
    with pytest.raises(Stop):
        run_bench(config, progress=False, on_record=stop_after_five)
    assert len(read_records(tmp_path)) == 5
    run_bench(config, progress=False)

    def deterministic(records):
        return {key_of(r): {k: r[k] for k in DETERMINISTIC} for r in records}

    assert deterministic(read_records(tmp_path)) == deterministic(read_records(reference[0]))


def test_parallel_jobs_give_the_same_records(reference, tiny_folder, tasks, tmp_path):
    """jobs=2 runs two (task, method) chains at once, each run in its own process: same runs, same numbers."""
    config = bench_config(tiny_folder, tasks, tmp_path, isolate=True, jobs=2)
    run_bench(config, progress=False)
    records = read_records(tmp_path)
    assert all(r["status"] == "ok" and r["jobs"] == 2 for r in records)

    def deterministic(records):
        return {key_of(r): {k: r[k] for k in DETERMINISTIC} for r in records}

    assert deterministic(records) == deterministic(read_records(reference[0]))


def test_jobs_need_separate_processes(tiny_folder, tasks, tmp_path):
    with pytest.raises(ConfigError, match="jobs > 1 .*in-process"):
        bench_config(tiny_folder, tasks, tmp_path, jobs=2)  # the helper runs in-process


def test_results_of_another_configuration_are_refused(reference, tiny_folder, tasks):
    output, _ = reference
    with pytest.raises(ConfigError, match=r"another configuration \(max_length 24 -> 32\).*--fresh.*--output"):
        run_bench(bench_config(tiny_folder, tasks, output, max_length=32), progress=False)
    with pytest.raises(ConfigError, match=r"holds lora runs with settings .*'r': 8.*uses .*'r': 4.*--fresh"):
        run_bench(bench_config(tiny_folder, tasks, output, settings={"lora": {"r": 4}}), progress=False)


def test_a_second_bench_on_the_same_output_is_refused(reference, tiny_folder, tasks):
    output, _ = reference
    config = bench_config(tiny_folder, tasks, output)
    with Results(output / RESULTS_NAME, config), pytest.raises(ConfigError, match="another bench is writing"):
        run_bench(config, progress=False)


def test_fresh_starts_over(reference, tiny_folder, tasks, tmp_path):
    config = bench_config(tiny_folder, tasks[:1], tmp_path, methods=("probe",), seeds=1, lrs={"probe": [1e-2]})
    run_bench(config, progress=False)
    with pytest.raises(ConfigError, match="another configuration"):
        run_bench(config.replace(steps=MIN_STEPS + 1), progress=False)
    run_bench(config.replace(steps=MIN_STEPS + 1), fresh=True, progress=False)
    assert len(read_records(tmp_path)) == 1


def test_more_seeds_and_methods_extend_the_same_results(reference, tiny_folder, tasks, tmp_path):
    """Tasks, methods and seeds are not part of the setup: a later bench adds to the same file."""
    config = bench_config(tiny_folder, tasks[:1], tmp_path, methods=("probe",), seeds=1, lrs={"probe": [1e-2]})
    run_bench(config, progress=False)
    run_bench(config.replace(seeds=2, methods=("probe", "layernorm"), lrs={"probe": [1e-2], "layernorm": [1e-2]}),
              progress=False)
    assert sorted((r["method"], r["seed"]) for r in read_records(tmp_path)) == [
        ("layernorm", 0), ("layernorm", 1), ("probe", 0), ("probe", 1)]


IMAGE_ONLY = {"hst"}  # a side network that reads the image: no text classifier to bench it on


def test_every_registered_method_is_benchable_by_name(tiny_folder, tasks, tmp_path):
    names = [m.name for m in petkit.all_methods() if m.name not in IMAGE_ONLY]
    config = bench_config(tiny_folder, tasks[:1], tmp_path, methods=names, seeds=1, lrs={m: [1e-3] for m in names})
    board = run_bench(config, progress=False)
    assert all(r["status"] == "ok" for r in read_records(tmp_path))
    assert sorted(r["method"] for r in board.rows) == sorted(names)


def test_a_failing_run_is_recorded_and_the_grid_goes_on(tiny_folder, tasks, tmp_path):
    config = bench_config(tiny_folder, tasks[:1], tmp_path, methods=("lora", "probe"), seeds=1,
                          settings={"lora": {"targets": ["no_such_module"]}}, lrs={"lora": [1e-3], "probe": [1e-2]})
    run_bench(config, progress=False)
    status = {r["method"]: r["status"] for r in read_records(tmp_path)}
    assert status == {"lora": "failed", "probe": "ok"}
    assert "no_such_module" in (tmp_path / "leaderboard.md").read_text()


def test_variants_bench_one_method_twice_and_ratios_follow_the_baseline(tiny_folder, tasks, tmp_path):
    """A variant is a registered method under another name with other settings; --baseline picks the
    method that memory and step time are divided by."""
    config = bench_config(tiny_folder, tasks[:1], tmp_path, methods=("lora", "lora-r2"), seeds=1,
                          variants={"lora-r2": {"method": "lora", "r": 2}}, baseline="lora",
                          lrs={"lora": [5e-3], "lora-r2": [5e-3]})
    board = run_bench(config, progress=False)
    records = {r["method"]: r for r in read_records(tmp_path)}
    assert records["lora-r2"]["settings"]["r"] == 2 and records["lora"]["settings"]["r"] == 8
    assert records["lora-r2"]["trainable_params"] < records["lora"]["trainable_params"]
    rows = {r["method"]: r for r in board.rows}
    assert rows["lora"]["step_vs_baseline"] == pytest.approx(1.0)
    ratio = rows["lora"]["train_mb_vs_baseline"]  # in-process memory can read 0 MB: then no ratio (NaN)
    assert ratio == pytest.approx(1.0) or math.isnan(ratio)
    assert rows["lora-r2"]["family"] == rows["lora"]["family"] == "low-rank"
    assert "× lora" in (tmp_path / "leaderboard.md").read_text()


@pytest.mark.parametrize("changes,message", [
    ({"variants": {"lora": {"method": "lora"}}}, r"variant 'lora' would hide the registered method"),
    ({"variants": {"x": {"r": 2}}}, r"variant 'x' must name a registered method as `method`"),
    ({"variants": {"x": {"method": "lora", "r": "big"}}, "methods": ("x",)}, r"r"),
    ({"baseline": "full"}, r"baseline 'full' .* is not among the bench methods"),
])
def test_bad_variants_and_baselines_are_clear_errors(tiny_folder, tasks, tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        bench_config(tiny_folder, tasks, tmp_path, **changes)


def test_against_peft_reports_ratios(tiny_folder, tasks, tmp_path):
    shared = ("lora", "dora", "ia3", "miss", "prompt")  # every method PEFT has too
    methods = (*shared, "probe")
    config = bench_config(tiny_folder, tasks[:1], tmp_path, methods=methods, seeds=1,
                          against="peft", lrs={m: [5e-3] for m in methods})
    board = run_bench(config, progress=False)
    records = read_records(tmp_path)
    assert all(r["status"] == "ok" for r in records), [(r["method"], r.get("error")) for r in records if r["status"] != "ok"]
    assert {r["method"] for r in records if r["library"] == "peft"} == set(shared)  # no PEFT probe
    assert [p["method"] for p in board.peft] == list(shared)
    for p in board.peft:
        # same config, initial weights, data and trainer: only the adapter library differs
        assert p["acc"] == pytest.approx(1.0) and p["step"] > 0 and p["unmerged"] > 0
        assert p["merged"] > 0 or p["method"] == "prompt"  # a prompt cannot be merged
    by_key = {(r["library"], r["method"]): r for r in records}
    for method in shared:
        ours, theirs = by_key[("petkit", method)], by_key[("peft", method)]
        assert ours["trainable_params"] == theirs["trainable_params"]
        assert ours["dev"]["loss"] == pytest.approx(theirs["dev"]["loss"], abs=1e-4)
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "## Side by side with Hugging Face PEFT" in markdown and "| `ia3` | sentiment | 1 |" in markdown


def test_isolated_run_measures_memory_in_a_fresh_process(tiny_folder, tasks, tmp_path):
    config = bench_config(tiny_folder, tasks[:1], tmp_path, methods=("probe",), seeds=1, lrs={"probe": [1e-2]},
                          isolate=True)
    run_bench(config, progress=False)
    (record,) = read_records(tmp_path)
    assert record["status"] == "ok", record.get("error")
    assert "fresh process" in record["memory_method"] and record["peak_rss_mb"] > record["train_mb"] >= 0


@pytest.mark.parametrize("changes,message", [
    ({"methods": ("lora", "lorax")}, r"unknown method lorax; known methods: .*bitfit, .*dora, .*lora"),
    ({"tasks": ("nope",)}, r"unknown task nope; known tasks: ag_news, .*bbc, .*or a path"),
    ({"steps": MIN_STEPS - 1}, rf"too small to evaluate.*at least {MIN_STEPS} steps"),
    ({"lrs": {"lora": []}}, r"learning-rate grid of lora must be a non-empty list"),
    ({"against": "peft", "methods": ("bitfit",)}, r"compares the methods both libraries have"),
])
def test_bad_input_is_one_clear_error(tiny_folder, tasks, tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        bench_config(tiny_folder, changes.pop("tasks", tasks), tmp_path, **changes)


def test_cli_yaml_form_and_errors(reference, tiny_folder, tasks, capsys, tmp_path):
    output, _ = reference
    yaml_file = tmp_path / "bench.yaml"
    yaml_file.write_text(f"model: {tiny_folder}\ntasks: [{', '.join(tasks)}]\nmethods: lora,bitfit\nseeds: 2\n"
                         f"budget: steps={MIN_STEPS}\nbatch_size: 8\nmax_length: 24\nmax_train: null\n"
                         f"max_eval: null\nisolate: false\noutput: {output}\n")
    assert main(["bench", "--config", str(yaml_file), "--no-progress"]) == 0  # everything done: report only
    assert "leaderboard:" in capsys.readouterr().out

    for argv, message in ((["--methods", "lorax"], "unknown method lorax"),
                          (["--budget", "steps=2"], "too small to evaluate"),
                          (["--budget", "epochs=2"], "budget is steps=N"),
                          (["--max-length", "32"], "another configuration")):
        assert main(["bench", "--config", str(yaml_file), "--no-progress", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


# -- language modelling: scored by test perplexity (lower is better) --------------------------------

@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def lm_text(tmp_path_factory):
    """A running text of short paragraphs (a .txt task is split into train/dev/test at blank lines)."""
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "the", "dog", "ran", "to", "the", "sun"]
    path = tmp_path_factory.mktemp("lm") / "toy_lm.txt"
    path.write_text("\n\n".join(" ".join(rng.choices(words, k=10)) for _ in range(120)))
    return str(path)


@pytest.fixture(scope="module")
def lm_bench(lm_folder, lm_text, tmp_path_factory):
    """lora and ia3 (2 learning rates each, seed 0) on the text, each with its PEFT twin."""
    output = tmp_path_factory.mktemp("lm-bench")
    config = BenchConfig(model=lm_folder, tasks=(lm_text,), methods=("lora", "ia3"), seeds=1, steps=MIN_STEPS,
                         batch_size=4, max_length=32, max_train=None, max_eval=None, isolate=False,
                         against="peft", extend=0, output=str(output))
    return output, config, run_bench(config, progress=False)


def test_lm_grid_is_scored_by_perplexity(lm_bench, lm_text):
    output, _, board = lm_bench
    records = read_records(output)
    assert all(r["status"] == "ok" for r in records), [(r["method"], r.get("error")) for r in records if r["status"] != "ok"]
    for r in records:
        assert set(r["test"]) == {"loss", "perplexity"} and r["test"]["perplexity"] > 1
        assert r["inference"]["unmerged_ratio"] > 0
    for method in ("lora", "ia3"):  # the learning rate with the lowest dev loss is chosen
        search = [r for r in records if r["library"] == "petkit" and r["method"] == method]
        assert len(search) == 2
        best = min(search, key=lambda r: r["dev"]["loss"])["lr"]
        row = next(row for row in board.rows if row["method"] == method)
        cell = row["tasks"][lm_text]
        assert cell["lr"] == best and cell["ppl_mean"] == best_ppl(search, best) and "acc_mean" not in cell
        assert row["mean_ppl"] == cell["ppl_mean"] and math.isnan(row["mean_acc"])

    markdown = (output / "leaderboard.md").read_text()
    assert "\nPerplexity (lower is better) on the language-modelling task toy_lm: test perplexity" in markdown
    assert "| mean ppl | Borda |" in markdown and "| mean |" not in markdown
    assert "lowest dev loss" in markdown and "Plots: toy_lm is a language-modelling task" in markdown
    for png in ("accuracy_vs_params.png", "memory_time.png", "heatmap.png"):
        assert (output / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.loads((output / "leaderboard.json").read_text())  # NaN-free enough to read back


def best_ppl(runs, lr):
    return next(r["test"]["perplexity"] for r in runs if r["lr"] == lr)


def test_lm_ranking_puts_the_lowest_perplexity_first(lm_bench):
    _, _, board = lm_bench
    by_ppl = sorted(board.rows, key=lambda r: r["mean_ppl"])
    if by_ppl[0]["mean_ppl"] != by_ppl[1]["mean_ppl"]:
        assert [r["method"] for r in board.rows] == [r["method"] for r in by_ppl]
        assert board.rows[0]["borda_position"] == 1


def test_lm_ranking_direction_on_made_up_records(lm_folder, lm_text, tmp_path):
    """Lower perplexity ranks higher; a classification task in the same board still ranks by accuracy."""
    from petkit.bench.leaderboard import build

    config = BenchConfig(model=lm_folder, tasks=(lm_text, "bbc"), methods=("lora", "ia3", "bitfit"), seeds=1,
                         lrs={m: [1e-3] for m in ("lora", "ia3", "bitfit")}, output=str(tmp_path))

    def record(method, task, test):
        dev = {"loss": 1.0, **({"accuracy": 0.5} if "accuracy" in test else {"perplexity": 2.7})}
        return {"status": "ok", "library": "petkit", "method": method, "task": task, "seed": 0, "lr": 1e-3,
                "dev": dev, "test": test, "trainable_params": 10, "base_params": 100}

    ppl = {"lora": 5.0, "ia3": 9.0, "bitfit": 20.0}
    records = [record(m, lm_text, {"loss": math.log(p), "perplexity": p}) for m, p in ppl.items()]
    board = build(config, records)
    assert [r["method"] for r in board.rows] == ["lora", "ia3", "bitfit"]
    assert board.rankings["mean"]["order"][0] == board.rankings["kemeny"]["order"][0] == "lora"

    # accuracy on bbc reversed against the perplexity order: each method wins one task, lora only on ppl
    acc = {"lora": 0.2, "ia3": 0.9, "bitfit": 0.8}
    records += [record(m, "bbc", {"loss": 1.0, "accuracy": a}) for m, a in acc.items()]
    board = build(config, records)
    assert board.rows[0]["method"] == "ia3"  # 2nd and 1st beats 1st and 3rd, 3rd and 2nd
    from petkit.bench.report import render
    markdown = render(board, config, records)
    assert "| mean acc | mean ppl | Borda |" in markdown and "5.00 ± 0.00" in markdown and "90.0 ± 0.0" in markdown


def made_up_record(method, task, seed, accuracy):
    return {"status": "ok", "library": "petkit", "method": method, "task": task, "seed": seed, "lr": 1e-3,
            "dev": {"loss": 1.0, "accuracy": 0.5}, "test": {"loss": 1.0, "accuracy": accuracy},
            "trainable_params": 10, "base_params": 100}


def test_board_ties_scores_that_print_the_same(tiny_folder, tasks, tmp_path):
    """The MiniLM zoo's TREC cell: the same total accuracy over three seeds, summed in another order,
    gives means 0.928 and 0.9279999999999999 - both print 92.8, so the pair is a tie (1/2 each)."""
    from petkit.bench.leaderboard import build
    from petkit.bench.report import render

    methods = ("lora", "bitfit", "ia3")
    config = BenchConfig(model=tiny_folder, tasks=tasks, methods=methods, seeds=3,
                         lrs={m: [1e-3] for m in methods}, output=str(tmp_path))
    seeds = {"lora": [0.932, 0.932, 0.92], "bitfit": [0.938, 0.924, 0.922], "ia3": [0.5, 0.5, 0.5]}
    other = {"lora": 0.9, "bitfit": 0.8, "ia3": 0.7}  # the other task orders them lora > bitfit > ia3
    records = [made_up_record(m, tasks[0], k, a) for m, accs in seeds.items() for k, a in enumerate(accs)]
    records += [made_up_record(m, tasks[1], k, other[m]) for m in methods for k in range(3)]
    board = build(config, records)
    rows = {r["method"]: r for r in board.rows}
    assert rows["lora"]["tasks"][tasks[0]]["acc_mean"] != rows["bitfit"]["tasks"][tasks[0]]["acc_mean"]
    assert {m: r["borda_score"] for m, r in rows.items()} == {"lora": 2.0 + 1.5, "bitfit": 1.0 + 1.5, "ia3": 0.0}
    assert board.rank_decimals == {"accuracy": 1}
    assert "Both compare the scores as printed (accuracy to 0.1 points" in render(board, config, records)
    # the precision is a setting: compared exactly, the last bit decides the pair again
    exact = build(config.replace(rank_decimals={"accuracy": None}), records)
    assert {r["method"]: r["borda_score"] for r in exact.rows}["lora"] == 2.0 + 2.0
    assert "accuracy exactly" in render(exact, config, records)
    with pytest.raises(ConfigError, match="rank_decimals"):
        config.replace(rank_decimals={"accuracy": -1})
    with pytest.raises(ConfigError, match="rank_decimals"):
        config.replace(rank_decimals={"f1": 1})


def test_board_says_when_the_kemeny_order_is_not_unique(tiny_folder, tasks, tmp_path):
    """A 3-cycle over three tasks (each method first on one): three Kemeny orders are optimal."""
    from petkit.bench.leaderboard import build
    from petkit.bench.report import render

    methods = ("lora", "bitfit", "ia3")
    text = tmp_path / "third.csv"
    text.write_text(open(tasks[0]).read())
    three = (*tasks, str(text))
    config = BenchConfig(model=tiny_folder, tasks=three, methods=methods, seeds=1,
                         lrs={m: [1e-3] for m in methods}, output=str(tmp_path))
    latin = {"lora": [0.9, 0.8, 0.7], "bitfit": [0.8, 0.7, 0.9], "ia3": [0.7, 0.9, 0.8]}
    records = [made_up_record(m, t, 0, a) for m, accs in latin.items() for t, a in zip(three, accs)]
    board = build(config, records)
    assert board.rankings["kemeny"]["optimal_orders"] == 3
    assert all(r["kemeny_range"] == [1, 3] for r in board.rows)
    markdown = render(board, config, records)
    assert "| 3.0 | 1–3 |" in markdown and "The Kemeny order is not unique: 3 orders are equally optimal" in markdown
    # one method better everywhere: unique positions, no note
    records = [made_up_record(m, t, 0, a) for m, a in zip(methods, (0.9, 0.8, 0.7)) for t in three]
    markdown = render(build(config, records), config, records)
    assert "| 6.0 | 1 |" in markdown and "not unique" not in markdown


def test_against_peft_on_a_language_model(lm_bench):
    output, _, board = lm_bench
    records = read_records(output)
    assert {r["method"] for r in records if r["library"] == "peft"} == {"lora", "ia3"}
    assert [p["method"] for p in board.peft] == ["lora", "ia3"]
    for p in board.peft:
        assert "acc" not in p and p["ppl"] == pytest.approx(1.0, abs=1e-3) and p["petkit_ppl"] > 1
        assert p["step"] > 0 and p["unmerged"] > 0 and p["merged"] > 0
    by_key = {(r["library"], r["method"]): r for r in records if r["library"] == "peft" or
              r["lr"] == next(p["lr"] for p in board.peft if p["method"] == r["method"])}
    for method in ("lora", "ia3"):
        ours, theirs = by_key[("petkit", method)], by_key[("peft", method)]
        assert ours["trainable_params"] == theirs["trainable_params"]
        assert ours["dev"]["loss"] == pytest.approx(theirs["dev"]["loss"], abs=1e-4)
    markdown = (output / "leaderboard.md").read_text()
    assert "| petkit ppl | PEFT ppl | ppl ratio |" in markdown and "| `ia3` | toy_lm | 1 |" in markdown


def test_cli_prints_perplexity_for_lm(lm_bench, capsys, tmp_path):
    output, config, _ = lm_bench
    yaml_file = tmp_path / "lm.yaml"
    yaml_file.write_text(f"model: {config.model}\ntasks: [{config.tasks[0]}]\nmethods: lora,ia3\nseeds: 1\n"
                         f"budget: steps={MIN_STEPS}\nbatch_size: 4\nmax_length: 32\nmax_train: null\n"
                         f"max_eval: null\nisolate: false\nagainst: peft\nextend: 0\noutput: {output}\n")
    assert main(["bench", "--config", str(yaml_file), "--no-progress", "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "mean test ppl" in out and "mean test acc" not in out


def test_seed_spread_is_max_over_min_and_needs_two_runs():
    from petkit.bench.summary import Cell
    runs = [{"step_s": 0.2}, {"step_s": 0.25}, {"step_s": 0.22}]
    assert Cell("petkit", "lora", "t", 1e-3, runs).spread("step_s") == pytest.approx(1.25)
    assert math.isnan(Cell("petkit", "lora", "t", 1e-3, runs[:1]).spread("step_s"))
