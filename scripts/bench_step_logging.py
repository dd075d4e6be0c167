"""Per-step monitoring overhead: training steps/s without tfsft's step logging, with it at `every_steps` N, and
with it at every step (worst case), on one model.

    python scripts/bench_step_logging.py                      # tiny BERT on synthetic keyword sentences
    python scripts/bench_step_logging.py --config configs/quickstart.yaml --steps 60   # MiniLM

Rounds alternate the variants so that a machine shared with other work biases none of them; the median of
`--rounds` is reported. Run directories go to a temporary folder.
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def tiny_config(tmp: Path) -> dict:
    words = ["the", "flight", "gate", "bag", "seat", "crew", "was", "today"]
    rows = ["text,label"]
    rng = random.Random(0)
    for i in range(2048):
        label = ["negative", "positive"][i % 2]
        rows.append(" ".join(rng.sample(words, 5) + [["awful", "great"][i % 2]]) + f",{label}")
    (tmp / "train.csv").write_text("\n".join(rows) + "\n")
    return {
        "name": "bench",
        "output_dir": str(tmp / "runs"),
        "data": {"train": str(tmp / "train.csv")},
        "text": {"vocabulary": "learn", "vocabulary_size": 200, "max_length": 32},
        "model": {
            "backbone": {
                "architecture": "BertBackbone",
                "kwargs": {
                    "num_layers": 2,
                    "num_heads": 2,
                    "hidden_dim": 64,
                    "intermediate_dim": 128,
                    "max_sequence_length": 64,
                },
            }
        },
        "training": {"epochs": 1, "batch_size": 32},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="A tfsft config (default: a tiny BERT).")
    parser.add_argument("--steps", type=int, default=200, help="Timed steps per round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, default=5, help="logging.every_steps of the 'logging' variant.")
    args = parser.parse_args()

    from tfsft.config import load_config, validate
    from tfsft.optim import unwrapped
    from tfsft.step_logging import monitoring_callbacks
    from tfsft.trainer import prepare

    tmp = Path(tempfile.mkdtemp(prefix="bench_step_logging_"))
    atexit.register(shutil.rmtree, tmp, True)  # the run folder goes when the benchmark ends
    if args.config:
        config = load_config([args.config], [f"output_dir={tmp / 'runs'}"])
    else:
        config = validate(tiny_config(tmp))
    p = prepare(config, resume="never")
    model = p.model
    data = p.modality.dataset(p.splits.train, p.targets["train"], training=True, batch_size=p.batch_size)
    inner = unwrapped(model.optimizer)
    original_clip = inner._clip_gradients

    def callbacks_for(every):
        inner._clip_gradients = original_clip  # uninstall a previous probe
        if every is None:
            return []
        cfg = config.logging.model_copy(update={"every_steps": every})
        return monitoring_callbacks(
            cfg, model, p.plan, p.strategy, p.run, p.steps_per_epoch, 1, p.batch_size, None, None
        )

    variants = {"no step logging": None, f"every {args.every} steps": args.every, "every step": 1}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.rounds + 1):  # round 0 traces each variant's train function: not timed
        for name, every in variants.items():
            callbacks = callbacks_for(every)
            model.make_train_function(force=True)
            steps = 3 if round_index == 0 else args.steps
            started = time.perf_counter()
            model.fit(data, epochs=1, steps_per_epoch=steps, callbacks=callbacks, verbose=0)
            if round_index:
                rates[name].append(steps / (time.perf_counter() - started))
    base = statistics.median(rates["no step logging"])
    print(f"{'variant':<20} {'steps/s (median)':>17} {'vs none':>9}   rounds")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<20} {median:>17.2f} {median / base - 1:>+8.1%}   {', '.join(f'{v:.2f}' for v in values)}")


if __name__ == "__main__":
    main()
