"""The bad-input battery: every way a user can hand train / evaluate / predict / tune / export a wrong input.

Each case calls the entry point's main() in-process and asserts: exit code 2, the message names the culprit
(file, line, key or value), no traceback, and the finished runs and exported models already on disk are not
touched (stat checked after every case, content hashes once at the end). Most cases fail before any TensorFlow
work; one tiny text run and one tiny image run (trained and exported once per session) serve the rest.
"""

from __future__ import annotations

import json

import pytest

from bad_inputs_support import build_world, call, digest

PNG_HEADER = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        # hf:// presets fail as offline even where the machine has network (nothing is downloaded).
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield build_world(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="module")
def baseline(world):
    return digest(world)


def stat_signature(world) -> dict:
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
        for top in (world.root / "runs", world.root / "saved_models")
        for p in sorted(top.rglob("*"))
    }


# ----------------------------------------------------------------------------------------- input files
def rows_csv(n=40, start=0):
    labels = ["negative", "positive"]
    return "".join(f"flight number {i} was {'good' if i % 2 else 'bad'},{labels[i % 2]}\n" for i in range(start, n))


def unterminated_quote_csv(w):
    lines = rows_csv(40).splitlines(keepends=True)
    lines[9] = '"great flight with a quote never closed,positive\n'  # file line 11 (after the header)
    return w.file("unterminated.csv", "text,label\n" + "".join(lines))


def jsonl(records):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def good_jsonl_records(n=30):
    return [
        {"text": f"flight {i} was {'good' if i % 2 else 'bad'}", "label": ["negative", "positive"][i % 2]}
        for i in range(n)
    ]


def image_folder_with(w, name, extra: dict[str, bytes], empty_class: str | None = None):
    import shutil

    root = w.root / "inputs" / name
    if not root.exists():
        shutil.copytree(w.digits["train"], root)
        for relative, content in extra.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(content)
        if empty_class:
            (root / empty_class).mkdir()
    return str(root)


def a_file(w, name="plain.txt"):
    return w.file(name, "not a folder\n")


def preset(w, location):
    return [
        *w.text_cfg(),
        "--set",
        "model.backbone.architecture=null",
        "--set",
        "model.backbone.kwargs={}",
        "--set",
        f"model.backbone.preset={location}",
    ]


def tune_cfg(w, name="tune.yaml", **tune):
    base = {
        "tuner": "random",
        "max_trials": 1,
        "space": {"optimizer.learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "sampling": "log"}},
    }
    base.update(tune)
    return w.text_cfg(name, tune=base)


# ----------------------------------------------------------------------------------------- the cases
# (id, entry point, args(world) -> list[str], fragments the message must contain)
TRAIN = [
    ("config-is-folder", lambda w: ["--config", str(w.root / "configs")], ["configs", "is a folder", "YAML file"]),
    ("config-missing", lambda w: ["--config", str(w.root / "nope.yaml")], ["nope.yaml", "does not exist"]),
    (
        "config-bad-yaml",
        lambda w: ["--config", w.file("bad.yaml", "data: [unclosed\n")],
        ["bad.yaml", "not valid YAML"],
    ),
    ("config-is-list", lambda w: ["--config", w.file("list.yaml", "- a\n- b\n")], ["list.yaml", "mapping"]),
    (
        "config-latin1",
        lambda w: ["--config", w.file("latin.yaml", "name: caf\xe9\n".encode("latin-1"))],
        ["latin.yaml"],
    ),
    ("set-without-equals", lambda w: [*w.text_cfg(), "--set", "training.epochs"], ["--set", "training.epochs"]),
    ("set-empty-key", lambda w: [*w.text_cfg(), "--set", "training..epochs=3"], ["training..epochs=3", "empty key"]),
    ("unknown-key", lambda w: [*w.text_cfg(), "--set", "training.epoch=3"], ["training.epoch", "training.epochs"]),
    ("seed-negative", lambda w: [*w.text_cfg(), "--set", "seed=-1"], ["'seed' = -1", "greater than or equal to 0"]),
    ("seed-too-big", lambda w: [*w.text_cfg(), "--set", "seed=99999999999"], ["'seed' = 99999999999"]),
    ("batch-size-zero", lambda w: [*w.text_cfg(), "--set", "training.batch_size=0"], ["training.batch_size", "= 0"]),
    (
        "batch-size-word",
        lambda w: [*w.text_cfg(), "--set", "training.batch_size=large"],
        ["training.batch_size", "'large'"],
    ),
    ("epochs-zero", lambda w: [*w.text_cfg(), "--set", "training.epochs=0"], ["training.epochs", "= 0"]),
    (
        "learning-rate-negative",
        lambda w: [*w.text_cfg(), "--set", "optimizer.learning_rate=-0.1"],
        ["optimizer.learning_rate", "-0.1"],
    ),
    ("optimizer-unknown", lambda w: [*w.text_cfg(), "--set", "optimizer.name=adamax"], ["optimizer.name", "adamax"]),
    ("image-size-zero", lambda w: [*w.image_cfg(), "--set", "image.size=[0, 32]"], ["image.size", "= 0"]),
    ("image-size-one-number", lambda w: [*w.image_cfg(), "--set", "image.size=32"], ["image.size"]),
    (
        "classes-duplicate",
        lambda w: [*w.text_cfg(), "--set", "data.classes=[negative, positive, negative]"],
        ["data.classes", "duplicate", "negative"],
    ),
    (
        "monitor-unknown-metric",
        lambda w: [*w.text_cfg(), "--set", "training.early_stopping.monitor=val_f1"],
        ["training.early_stopping.monitor", "'val_f1'", "Did you mean 'val_macro_f1'"],
    ),
    (
        "monitor-regression-accuracy",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "task.type=regression",
            "--set",
            "training.early_stopping.monitor=val_accuracy",
        ],
        ["training.early_stopping.monitor", "'val_accuracy'", "val_mae"],
    ),
    (
        "gradual-stage-after-last-epoch",
        lambda w: [*w.text_cfg(), "--set", "freeze.strategy=gradual", "--set", "training.epochs=2"],
        ["freeze.schedule", "epoch(s) [2]", "training.epochs = 2"],
    ),
    (
        "gradual-schedule-not-from-zero",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "freeze.strategy=gradual",
            "--set",
            "freeze.schedule=[{epoch: 1, trainable_units: 0}]",
        ],
        ["freeze.schedule", "epoch 0"],
    ),
    (
        "splits-leave-nothing",
        lambda w: [*w.text_cfg(), "--set", "data.split.validation=0.6", "--set", "data.split.test=0.5"],
        ["validation (0.6) + test (0.5)"],
    ),
    (
        "mixup-on-regression",
        lambda w: [*w.image_cfg(), "--set", "task.type=regression", "--set", "image.augment.mixup_alpha=0.2"],
        ["MixUp", "task.type"],
    ),
    (
        "image-folder-format-for-text",
        lambda w: [*w.text_cfg(), "--set", "data.format=image_folder"],
        ["data.format image_folder", "task.modality"],
    ),
    (
        "output-dir-is-file",
        lambda w: [*w.text_cfg(), "--set", f"output_dir={a_file(w)}"],
        ["output_dir", "plain.txt", "is a file"],
    ),
    (
        "output-dir-under-file",
        lambda w: [*w.text_cfg(), "--set", f"output_dir={a_file(w)}/runs"],
        ["output_dir", "plain.txt", "is a file"],
    ),
    (
        "export-base-path-is-file",
        lambda w: [*w.text_cfg(), "--set", "export.enabled=true", "--set", f"export.base_path={a_file(w)}"],
        ["export.base_path", "plain.txt"],
    ),
    (
        "train-missing",
        lambda w: [*w.text_cfg(), "--set", f"data.train={w.root}/nope.csv"],
        ["data.train", "nope.csv", "does not exist"],
    ),
    (
        "train-is-folder-for-text",
        lambda w: [*w.text_cfg(), "--set", f"data.train={w.root / 'data'}"],
        ["data.train", "is a folder"],
    ),
    (
        "validation-missing",
        lambda w: [*w.text_cfg(), "--set", f"data.validation={w.root}/nope_val.csv"],
        ["data.validation", "nope_val.csv"],
    ),
    (
        "vocabulary-missing",
        lambda w: [*w.text_cfg(), "--set", f"text.vocabulary={w.root}/vocab.txt"],
        ["text.vocabulary", "vocab.txt", "does not exist"],
    ),
    (
        "weights-missing",
        lambda w: [*w.text_cfg(), "--set", f"model.backbone.weights={w.root}/w.weights.h5"],
        ["model.backbone.weights", "w.weights.h5", "does not exist"],
    ),
    ("resume-missing", lambda w: [*w.text_cfg(), "--resume", str(w.root / "runs" / "nope")], ["--resume", "nope"]),
    (
        "resume-not-a-run",
        lambda w: [*w.text_cfg(), "--resume", str(w.root / "configs")],
        ["--resume", "configs", "no config.yaml"],
    ),
    ("encoding-unknown", lambda w: [*w.text_cfg(), "--set", "data.encoding=klingon"], ["data.encoding", "klingon"]),
    (
        "train-latin1",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "data.train="
            + w.file("latin.csv", ("text,label\n" + rows_csv(10) + "caf\xe9 was great,positive\n").encode("latin-1")),
        ],
        ["latin.csv", "not valid utf-8", "line 12", "data.encoding"],
    ),
    (
        "csv-unterminated-quote",
        lambda w: [*w.text_cfg(), "--set", f"data.train={unterminated_quote_csv(w)}"],
        ["unterminated.csv", "line 11", "quoted field opened on line 11", "31 lines"],
    ),
    (
        "tsv-quoted-unterminated",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "data.quoting=double_quote",
            "--set",
            "data.train="
            + w.file(
                "quoted.tsv",
                "text\tlabel\n"
                + rows_csv(5).replace(",", "\t")
                + '"never closed\tpositive\n'
                + rows_csv(30, 5).replace(",", "\t"),
            ),
        ],
        ["quoted.tsv", "line 7"],
    ),
    (
        "csv-extra-field",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "data.on_bad_record=fail",
            "--set",
            "data.train="
            + w.file("extra.csv", "text,label\n" + rows_csv(3) + "great, really,positive\n" + rows_csv(40, 3)),
        ],
        ["extra.csv", "row 5", "3 fields where the header has 2"],
    ),
    (
        "jsonl-first-line-broken",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "data.on_bad_record=fail",
            "--set",
            "data.train=" + w.file("first.jsonl", jsonl(['{"text": "oops",'] + good_jsonl_records())),
        ],
        ["first.jsonl", "row 1", "invalid JSON"],
    ),
    (
        "jsonl-no-object",
        lambda w: [*w.text_cfg(), "--set", "data.train=" + w.file("none.jsonl", "[1]\n{bad\n")],
        ["none.jsonl", "no columns"],
    ),
    (
        "jsonl-array-line",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "data.on_bad_record=fail",
            "--set",
            "data.train=" + w.file("array.jsonl", jsonl(good_jsonl_records(5) + ["[1, 2]"] + good_jsonl_records(20))),
        ],
        ["array.jsonl", "row 6", "not an object"],
    ),
    (
        "text-column-missing",
        lambda w: [*w.text_cfg(), "--set", "data.text_column=tweet"],
        ["Column 'tweet'", "data.text_column", "['text', 'label']"],
    ),
    (
        "label-column-missing",
        lambda w: [*w.text_cfg(), "--set", "data.label_column=sentiment"],
        ["Column 'sentiment'", "data.label_column"],
    ),
    (
        "header-only",
        lambda w: [*w.text_cfg(), "--set", "data.train=" + w.file("header.csv", "text,label\n")],
        ["train split", "header.csv", "no usable records"],
    ),
    (
        "too-many-missing-labels",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "data.train="
            + w.file("nolabels.csv", "text,label\n" + rows_csv(20) + "".join(f"text {i},\n" for i in range(10))),
        ],
        ["nolabels.csv", "10 of 30", "data.max_bad_fraction"],
    ),
    (
        "validation-unknown-labels-over-fraction",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "data.validation="
            + w.file(
                "val_mixed.csv", "text,label\n" + rows_csv(10) + "".join(f"meh flight {i},mixed\n" for i in range(5))
            ),
        ],
        ["val_mixed.csv", "5 of 15", "'mixed'", "not in the class list"],
    ),
    (
        "test-only-unknown-labels",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "data.test=" + w.file("test_other.csv", "text,label\nfine,neutral\nok,meh\n"),
        ],
        ["test_other.csv", "'neutral'", "not in the class list"],
    ),
    (
        "class-listed-without-examples",
        lambda w: [*w.text_cfg(), "--set", "data.classes=[negative, neutral, positive]"],
        ["['neutral']", "no examples", "data.classes"],
    ),
    (
        "one-class-only",
        lambda w: [
            *w.text_cfg(),
            "--set",
            "data.train=" + w.file("one.csv", "text,label\n" + "".join(f"flight {i},positive\n" for i in range(20))),
            "--set",
            "data.validation=null",
            "--set",
            "data.test=null",
        ],
        ["at least 2 classes", "['positive']"],
    ),
    (
        "image-empty-class-folder",
        lambda w: [
            *w.image_cfg(),
            "--set",
            "data.train=" + image_folder_with(w, "empty_class", {}, empty_class="digit_7"),
        ],
        ["digit_7", "empty_class", "no images"],
    ),
    (
        "image-no-class-folders",
        lambda w: [*w.image_cfg(), "--set", f"data.train={w.root / 'data'}"],
        ["data", "no class sub-folders"],
    ),
    (
        "image-corrupt-fail",
        lambda w: [
            *w.image_cfg(),
            "--set",
            "data.on_bad_record=fail",
            "--set",
            "data.train=" + image_folder_with(w, "corrupt", {"digit_0/broken.png": PNG_HEADER + b" this is not a png"}),
        ],
        ["broken.png", "corrupt or unreadable image"],
    ),
    (
        "image-text-file-fail",
        lambda w: [
            *w.image_cfg(),
            "--set",
            "data.on_bad_record=fail",
            "--set",
            "data.train=" + image_folder_with(w, "texty", {"digit_1/notes.jpg": b"just some text"}),
        ],
        ["notes.jpg", "Unknown image file format"],
    ),
    (
        "image-csv-missing-files",
        lambda w: [
            *w.image_cfg(),
            "--set",
            "data.train="
            + w.file("images.csv", "path,label\n" + "".join(f"missing_{i}.png,digit_0\n" for i in range(6))),
        ],
        ["images.csv", "image file does not exist"],
    ),
    (
        "backbone-architecture-unknown",
        lambda w: [*w.text_cfg(), "--set", "model.backbone.architecture=BertBackbon"],
        ["model.backbone.architecture", "BertBackbon"],
    ),
    (
        "hf-preset-offline",
        lambda w: preset(w, "hf://google-bert/bert-base-uncased"),
        ["hf://google-bert/bert-base-uncased", "needs the network", "huggingface.co"],
    ),
    (
        "preset-folder-missing",
        lambda w: preset(w, "./no_such_preset"),
        ["model.backbone.preset", "no_such_preset", "does not exist"],
    ),
]

EVALUATE = [
    ("evaluate-no-run-argument", lambda w: [], ["--run"]),
    ("evaluate-run-missing", lambda w: ["--run", str(w.root / "runs" / "nope")], ["nope", "does not exist"]),
    ("evaluate-run-is-file", lambda w: ["--run", a_file(w)], ["plain.txt", "is a file"]),
    ("evaluate-run-not-finished", lambda w: ["--run", str(w.root / "configs")], ["configs", "no config.yaml"]),
    (
        "evaluate-data-missing",
        lambda w: ["--run", str(w.text_run), "--data", str(w.root / "nope.csv")],
        ["--data", "nope.csv", "does not exist"],
    ),
    ("evaluate-data-empty", lambda w: ["--run", str(w.text_run), "--data", " "], ["--data", "empty"]),
    (
        "evaluate-data-folder-for-text",
        lambda w: ["--run", str(w.text_run), "--data", str(w.root / "data")],
        ["--data", "is a folder"],
    ),
    (
        "evaluate-data-latin1",
        lambda w: [
            "--run",
            str(w.text_run),
            "--data",
            w.file("eval_latin.csv", "text,label\ncaf\xe9,positive\n".encode("latin-1")),
        ],
        ["eval_latin.csv", "line 2"],
    ),
    (
        "evaluate-data-unknown-labels",
        lambda w: ["--run", str(w.text_run), "--data", w.file("eval_other.csv", "text,label\nfine,neutral\nok,meh\n")],
        ["eval_other.csv", "neutral", "class list"],
    ),
    (
        "evaluate-data-unterminated-quote",
        lambda w: ["--run", str(w.text_run), "--data", unterminated_quote_csv(w)],
        ["unterminated.csv", "line 11"],
    ),
]

PREDICT = [
    ("predict-no-model-argument", lambda w: ["some text"], ["--model"]),
    (
        "predict-model-missing",
        lambda w: ["--model", str(w.root / "saved_models" / "nope"), "hi"],
        ["--model", "nope", "does not exist"],
    ),
    ("predict-model-is-file", lambda w: ["--model", a_file(w), "hi"], ["--model", "plain.txt", "is a file"]),
    (
        "predict-model-without-savedmodel",
        lambda w: ["--model", str(w.root / "configs"), "hi"],
        ["--model", "configs", "no SavedModel"],
    ),
    (
        "predict-batch-size-zero",
        lambda w: ["--model", str(w.text_model), "--batch-size", "0", "hi"],
        ["--batch-size", "0"],
    ),
    (
        "predict-batch-size-word",
        lambda w: ["--model", str(w.text_model), "--batch-size", "many", "hi"],
        ["--batch-size", "many"],
    ),
    ("predict-format-unknown", lambda w: ["--model", str(w.text_model), "--format", "xml", "hi"], ["--format", "xml"]),
    (
        "predict-output-is-folder",
        lambda w: ["--model", str(w.text_model), "--output", str(w.root / "configs"), "hi"],
        ["--output", "configs", "is a folder"],
    ),
    (
        "predict-output-folder-missing",
        lambda w: ["--model", str(w.text_model), "--output", str(w.root / "nope" / "out.jsonl"), "hi"],
        ["--output", "nope"],
    ),
    (
        "predict-input-missing",
        lambda w: ["--model", str(w.text_model), "--input", str(w.root / "in.txt")],
        ["--input", "in.txt", "does not exist"],
    ),
    (
        "predict-input-broken-jsonl",
        lambda w: [
            "--model",
            str(w.text_model),
            "--input",
            w.file("in.jsonl", jsonl(good_jsonl_records(3) + ['{"text": "broken'] + good_jsonl_records(2))),
        ],
        ["in.jsonl", "line 4", "invalid JSON"],
    ),
    (
        "predict-input-first-jsonl-line-broken",
        lambda w: [
            "--model",
            str(w.text_model),
            "--input",
            w.file("in_first.jsonl", jsonl(["{oops"] + good_jsonl_records(2))),
        ],
        ["in_first.jsonl", "line 1"],
    ),
    (
        "predict-input-latin1",
        lambda w: [
            "--model",
            str(w.text_model),
            "--input",
            w.file("in_latin.txt", "good flight\ncaf\xe9 queue\n".encode("latin-1")),
        ],
        ["in_latin.txt", "line 2", "not valid utf-8", "--encoding"],
    ),
    (
        "predict-input-csv-without-column",
        lambda w: ["--model", str(w.text_model), "--input", w.file("in.csv", "tweet\nhello\n")],
        ["in.csv", "Column 'text'", "--column"],
    ),
    (
        "predict-input-jsonl-non-text",
        lambda w: [
            "--model",
            str(w.text_model),
            "--input",
            w.file("in_num.jsonl", jsonl([{"text": "fine"}, {"text": 42}])),
        ],
        ["in_num.jsonl", "line 2", "42"],
    ),
    (
        "predict-input-csv-unterminated-quote",
        lambda w: ["--model", str(w.text_model), "--input", unterminated_quote_csv(w)],
        ["unterminated.csv", "line 11"],
    ),
    (
        "predict-encoding-unknown",
        lambda w: ["--model", str(w.text_model), "--encoding", "klingon", "hi"],
        ["--encoding", "klingon"],
    ),
    ("predict-no-inputs", lambda w: ["--model", str(w.text_model)], ["No inputs"]),
    (
        "predict-image-model-given-text-file",
        lambda w: ["--model", str(w.image_model), w.file("notes.png", "hello")],
        ["notes.png", "not an image"],
    ),
    (
        "predict-image-model-given-corrupt-png",
        lambda w: ["--model", str(w.image_model), w.file("corrupt.png", PNG_HEADER + b"garbage garbage")],
        ["corrupt.png", "rejected"],
    ),
    (
        "predict-image-missing",
        lambda w: ["--model", str(w.image_model), str(w.root / "nope.png")],
        ["nope.png", "does not exist"],
    ),
    (
        "predict-image-empty-file",
        lambda w: ["--model", str(w.image_model), w.file("empty.jpg", b"")],
        ["empty.jpg", "empty"],
    ),
]

TUNE = [
    ("tune-no-config", lambda w: [], ["--config"]),
    ("tune-max-trials-zero", lambda w: [*tune_cfg(w), "--max-trials", "0"], ["--max-trials", "0"]),
    ("tune-tuner-unknown", lambda w: [*tune_cfg(w), "--tuner", "genetic"], ["--tuner", "genetic"]),
    ("tune-no-tune-section", lambda w: w.text_cfg("notune.yaml"), ["tune", "notune.yaml"]),
    (
        "tune-objective-unknown",
        lambda w: tune_cfg(w, "obj.yaml", objective="val_f1"),
        ["tune.objective", "'val_f1'", "val_macro_f1"],
    ),
    (
        "tune-objective-without-validation",
        lambda w: [
            *tune_cfg(w, "noval.yaml", objective="val_loss"),
            "--set",
            "data.validation=null",
            "--set",
            "data.split.validation=0",
        ],
        ["tune.objective", "validation split"],
    ),
    (
        "tune-space-unknown-field",
        lambda w: tune_cfg(
            w, "space.yaml", space={"optimizer.learning_rat": {"type": "float", "min": 1e-4, "max": 1e-2}}
        ),
        ["optimizer.learning_rat", "optimizer.learning_rate"],
    ),
    (
        "tune-space-min-above-max",
        lambda w: tune_cfg(
            w, "minmax.yaml", space={"optimizer.learning_rate": {"type": "float", "min": 1e-2, "max": 1e-4}}
        ),
        ["min (0.01)", "max (0.0001)"],
    ),
    ("tune-name-outside", lambda w: [*tune_cfg(w), "--name", "../outside"], ["--name", "../outside"]),
    ("tune-seed-negative", lambda w: [*tune_cfg(w), "--set", "tune.seed=-5"], ["tune.seed", "-5"]),
    (
        "tune-output-dir-is-file",
        lambda w: [*tune_cfg(w), "--set", f"output_dir={a_file(w)}"],
        ["output_dir", "plain.txt"],
    ),
]

EXPORT = [
    ("export-no-run-argument", lambda w: [], ["--run"]),
    ("export-run-missing", lambda w: ["--run", str(w.root / "runs" / "nope")], ["nope", "does not exist"]),
    ("export-run-is-file", lambda w: ["--run", a_file(w)], ["plain.txt", "is a file"]),
    ("export-run-not-a-run", lambda w: ["--run", str(w.root / "configs")], ["configs", "status.json"]),
    ("export-format-unknown", lambda w: ["--run", str(w.text_run), "--format", "tflite"], ["--format", "tflite"]),
]

CASES = (
    [("train", *case) for case in TRAIN]
    + [("evaluate", *case) for case in EVALUATE]
    + [("predict", *case) for case in PREDICT]
    + [("tune", *case) for case in TUNE]
    + [("export", *case) for case in EXPORT]
)


def test_battery_size():
    assert len({case[1] for case in CASES}) == len(CASES) >= 65


@pytest.mark.parametrize("module,case_id,make_args,expected", CASES, ids=[c[1] for c in CASES])
def test_bad_input(module, case_id, make_args, expected, world, baseline, capsys):
    before = stat_signature(world)
    code, message = call(capsys, module, make_args(world))
    assert code == 2, f"exit {code}: {message}"
    assert "Traceback" not in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert stat_signature(world) == before, "a refused command changed an existing run or exported model"


def test_existing_runs_byte_identical_after_the_battery(world, baseline):
    # Runs last in this module (pytest keeps file order): every refused command above left them alone.
    assert digest(world) == baseline
