"""`make demo`: LoRA on MiniLM over BBC News (built in: nothing to download), end to end.

Prints accuracy before and after, the trainable parameters and the adapter's size on disk; saves
the adapter in Hugging Face PEFT format, reloads it onto a fresh base and checks that the
predictions match (with petkit, and with the real `peft` package when it is installed).
"""

from __future__ import annotations

import torch
from rich.console import Console

from petkit.cli.report import print_report
from petkit.core.load import load
from petkit.pipeline import RunSpec, prepare, run

console = Console()


def _predictions(model, dataset, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(dataset), batch_size):
            batch = dataset.collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
            batch.pop("labels")
            out.append(model(**batch).logits)
    return torch.cat(out)


def run_demo(epochs: int = 1, max_train: int | None = None, output: str = "runs/demo") -> int:
    spec = RunSpec(
        model="minilm", data="bbc", max_length=128, max_train=max_train, output=output, save_format="peft",
        method={"name": "lora", "r": 8, "alpha": 16, "targets": ["query", "value"]},
        train={"epochs": epochs, "lr": 2e-3, "batch_size": 16, "warmup": 0.1},
    )
    console.rule("petkit demo: LoRA on all-MiniLM-L6-v2, BBC News (5 topics)")
    report = run(spec, log=console.print)
    print_report(report, console)

    console.rule("reload check")
    trained = _predictions(report["_adapted"], report["_prepared"].test)
    fresh = prepare(RunSpec(model="minilm", data="bbc", max_train=1, max_length=128)).model
    reloaded = load(fresh, report["adapter"])
    again = _predictions(reloaded, report["_prepared"].test)
    same = torch.equal(trained.argmax(-1), again.argmax(-1)) and torch.allclose(trained, again, atol=1e-5)
    console.print(f"petkit reload of the PEFT-format adapter: predictions {'identical' if same else 'DIFFER'} "
                  f"on {len(again)} test articles (max |Δlogit| {float((trained - again).abs().max()):.2e})")
    try:
        import peft
    except ImportError:
        peft = None
    if peft is not None:
        base = prepare(RunSpec(model="minilm", data="bbc", max_train=1, max_length=128)).model
        theirs = _predictions(peft.PeftModel.from_pretrained(base, report["adapter"]), report["_prepared"].test)
        same_peft = torch.allclose(trained, theirs, atol=1e-4)
        console.print(f"Hugging Face PEFT {peft.__version__} loading the same files: predictions "
                      f"{'identical' if same_peft else 'DIFFER'} (max |Δlogit| {float((trained - theirs).abs().max()):.2e})")
        same = same and same_peft
    return 0 if same else 1
