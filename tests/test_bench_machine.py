"""A board's Machine and Versions lines come from its records, not from whoever renders the report."""

from __future__ import annotations

from petkit.bench.machine import recorded


def test_one_value_for_every_run_is_printed_alone():
    assert recorded([{"machine": "A, 2 cores"}] * 3, "machine") == "A, 2 cores"


def test_mixed_and_missing_values_are_counted():
    records = [{"machine": "B"}, {"machine": "A"}, {"machine": "A"}, {}, {"machine": None}]
    assert recorded(records, "machine") == "A (2 runs); B (1 run); not recorded for 2 runs made before records kept it"


def test_a_report_rendered_elsewhere_names_the_machine_of_the_runs(tmp_path):
    from petkit.bench.config import BenchConfig
    from petkit.bench.report import _protocol

    config = BenchConfig.from_dict({"model": "minilm", "tasks": ["sst2"], "methods": ["lora"]})
    records = [{"status": "ok", "machine": "Elsewhere CPU, 64 cores", "versions": "torch 0.0", "threads": 1}]
    text = "\n".join(_protocol(config, records))
    assert "Elsewhere CPU, 64 cores" in text and "torch 0.0" in text
