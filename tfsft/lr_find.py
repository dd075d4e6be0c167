"""`python -m tfsft.lr_find --config x.yaml [--set k=v] [--output DIR]`: a learning-rate range test.

Smith's range test (as fastai's `lr_find`): a fresh copy of the run's model (same backbone, freezing stage of
epoch 1, discriminative factors, optimizer, clipping) trains for a short exponential sweep of the learning rate
on the training data, one batch per rate, until the loss diverges. The smoothed loss-vs-LR curve is plotted and a
rate suggested by one of two rules:

- `valley` (default, fastai's): the middle of the longest stretch over which the loss keeps falling, nudged
  towards its lower-LR part; robust to noisy curves.
- `steepest`: where the smoothed loss falls fastest against log LR (before its minimum).

It writes `lr_find.png`, `lr_find.csv` and `lr_override.yaml` (`optimizer.learning_rate: <suggestion>`, to pass
as a second --config) into `--output` (default `lr_find/<name>-<time>/`), never into `output_dir`: no run
directory is created or touched.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from tfsft.cli import QUICKSTART, prepare_tensorflow_import, run_main, setup_logging
from tfsft.errors import ConfigError, DataError

DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum
SMOOTHING = 0.98  # exponential moving average of the loss, bias-corrected (fastai's)


# ----------------------------------------------------------------------------------------- the curve
def smooth(losses, beta: float = SMOOTHING) -> np.ndarray:
    out, average = [], 0.0
    for i, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * float(loss)
        out.append(average / (1 - beta**i))
    return np.asarray(out)


def valley(lrs: np.ndarray, losses: np.ndarray) -> int:
    """fastai's valley rule: the longest decreasing subsequence of the loss; its first third plus a half."""
    n = len(losses)
    lengths = [1] * n
    best_start, best_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
        if lengths[best_end] < lengths[i]:
            best_end, best_start = i, i - lengths[i]
    section = (best_end - best_start) / 3
    return int(min(max(best_start + int(section) + int(section / 2), 0), n - 1))


def steepest(lrs: np.ndarray, losses: np.ndarray) -> int:
    lowest = int(np.argmin(losses))
    if lowest < 2:
        return lowest
    slope = np.gradient(losses[: lowest + 1], np.log(lrs[: lowest + 1]))
    return int(np.argmin(slope))


RULES = {"valley": valley, "steepest": steepest}


def suggest(lrs, losses, rule: str) -> tuple[float, int]:
    """(suggested LR, index) on the smoothed curve."""
    lrs, smoothed = np.asarray(lrs, dtype=np.float64), smooth(losses)
    index = RULES[rule](lrs, smoothed)
    return float(lrs[index]), index


# ----------------------------------------------------------------------------------------- the sweep
def sweep_rates(start: float, end: float, steps: int) -> np.ndarray:
    return start * (end / start) ** (np.arange(steps) / max(steps - 1, 1))


def run_sweep(config, output: Path, start: float, end: float, steps: int) -> tuple[list, list]:
    """Train a fresh model for up to `steps` batches at exponentially growing rates; (lrs, losses) per batch."""
    import keras

    from tfsft.data import load_splits
    from tfsft.distribute import make_strategy
    from tfsft.modalities import get_modality
    from tfsft.model import build_model_and_plan, loss_for, metrics_for
    from tfsft.optim import build_optimizer

    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.distribute)
    modality = get_modality(config)
    splits = load_splits(config, modality.read)
    modality.prepare(splits.train, output)  # a learned vocabulary lands in the output folder
    num_outputs = len(splits.classes) if splits.classes.names else 1
    targets = splits.classes.targets(splits.train.labels, config.task.type)
    batch_size = config.training.global_batch_size(strategy.num_replicas_in_sync)
    rates = sweep_rates(start, end, steps)

    class Sweep(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            position = keras.ops.minimum(keras.ops.cast(step, "float32"), float(steps - 1)) / max(steps - 1, 1)
            return start * keras.ops.power(end / start, position)

    with strategy.scope():
        _, model, plan = build_model_and_plan(config, modality, num_outputs)
        # The sweep takes the schedule term of tfsft.learning_rate's formula; the stage and per-variable terms stay.
        optimizer = build_optimizer(config.optimizer, Sweep(), model)
        model.compile(optimizer=optimizer, loss=loss_for(config), metrics=metrics_for(config, num_outputs))
        plan.start(model, optimizer)  # the stage of epoch 1

    recorder = make_recorder(rates)
    dataset = modality.dataset(splits.train, targets, training=True, batch_size=batch_size)
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[recorder], verbose=0)
    return recorder.lrs, recorder.losses


def make_recorder(rates):
    """A callback recording each batch's own loss (metrics reset before every batch), stopping on divergence."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.lrs, self.losses = [], []

        def on_train_batch_begin(self, batch, logs=None):
            for metric in self.model.metrics:
                metric.reset_state()

        def on_train_batch_end(self, batch, logs=None):
            loss = float((logs or {}).get("loss", np.nan))
            if not np.isfinite(loss):
                self.model.stop_training = True
                return
            self.lrs.append(float(rates[batch]))
            self.losses.append(loss)
            smoothed = smooth(self.losses)
            if len(self.losses) > 5 and smoothed[-1] > DIVERGED * smoothed.min():
                self.model.stop_training = True

    return Recorder()


# ----------------------------------------------------------------------------------------- outputs
def write_outputs(output: Path, lrs, losses, suggestion: float, index: int, rule: str) -> None:
    import yaml

    from tfsft.reporting import _pyplot

    smoothed = smooth(losses)
    with open(output / "lr_find.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["learning_rate", "loss", "smoothed_loss"])
        writer.writerows(zip(lrs, losses, smoothed))
    (output / "lr_override.yaml").write_text(
        f"# python -m tfsft.lr_find, {rule} rule; use: --config your.yaml --config {output / 'lr_override.yaml'}\n"
        + yaml.safe_dump({"optimizer": {"learning_rate": float(f"{suggestion:.3g}")}})
    )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, losses, color="tab:blue", alpha=0.3, lw=1, label="loss per batch")
    ax.plot(lrs, smoothed, color="tab:blue", lw=2, label="smoothed")
    ax.plot([suggestion], [smoothed[index]], "o", color="tab:red", ms=9, label=f"{rule}: {suggestion:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    top = np.percentile(smoothed, 95) if len(smoothed) > 3 else None
    if top is not None:
        ax.set_ylim(min(losses) * 0.95, max(top, smoothed[0]) * 1.1)
    ax.set_title("Learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "lr_find.png", dpi=110)
    plt.close(fig)


def output_folder(config, given: str | None) -> Path:
    folder = Path(given) if given else Path("lr_find") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    runs = Path(config.output_dir).resolve()
    if folder.resolve() == runs or runs in folder.resolve().parents:
        raise ConfigError(
            f"--output {folder} is inside output_dir ({config.output_dir}), where run directories "
            f"live: the range test never writes there. Give a folder outside it."
        )
    return folder


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tfsft.lr_find", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", action="append", default=[], help="YAML config(s), as for tfsft.train.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", help="Folder for the plot, CSV and override file (default lr_find/<name>-<time>).")
    parser.add_argument("--start", type=float, default=1e-7, help="First learning rate (default 1e-7).")
    parser.add_argument("--end", type=float, default=1.0, help="Last learning rate (default 1).")
    parser.add_argument("--steps", type=int, default=100, help="Batches in the sweep (default 100).")
    parser.add_argument("--rule", choices=sorted(RULES), default="valley", help="How to pick the suggestion.")
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    prepare_tensorflow_import()
    setup_logging(args.verbose)

    def run():
        from tfsft.config import load_config

        config = load_config(args.config or [QUICKSTART], args.overrides)
        if not 0 < args.start < args.end:
            raise ConfigError(f"--start {args.start} / --end {args.end}: need 0 < start < end, e.g. 1e-7 and 1.")
        if args.steps < 5:
            raise ConfigError(f"--steps {args.steps}: the sweep needs at least 5 batches (100 is usual).")
        output = output_folder(config, args.output)
        output.mkdir(parents=True, exist_ok=True)
        lrs, losses = run_sweep(config, output, args.start, args.end, args.steps)
        if len(losses) < 3:
            raise DataError(
                f"The loss diverged after {len(losses)} batch(es) of the sweep: start lower "
                f"(--start {args.start / 100:g})."
            )
        suggestion, index = suggest(lrs, losses, args.rule)
        write_outputs(output, lrs, losses, suggestion, index, args.rule)
        print(
            f"Swept {len(lrs)} learning rates from {lrs[0]:.2e} to {lrs[-1]:.2e}"
            f"{' (stopped: the loss diverged)' if len(lrs) < args.steps else ''}."
        )
        print(f"Suggested learning rate ({args.rule} rule): {suggestion:.3g}")
        print(f"Plot: {output / 'lr_find.png'}; override: --config {output / 'lr_override.yaml'}")

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
