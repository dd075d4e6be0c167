"""User mistakes end in one clear paragraph naming the culprit and the fix, a non-zero exit, and no damage."""

import hashlib
import socket

import pytest

from conftest import image_config, run_cli, text_config, write_config, write_csv
from tfsft.train import main


def digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def existing_run(tmp_path):
    """A finished run of the same name that no failing command may touch."""
    run = tmp_path / "runs" / "tiny_text" / "20200101-000000"
    run.mkdir(parents=True)
    (run / "status.json").write_text('{"state": "completed"}')
    (run / "config.yaml").write_text("name: tiny_text\n")
    (run / "metrics.json").write_text('{"test": {"accuracy": 0.9}}')
    return run


def run_failing(capsys, config_path, *sets):
    args = ["--config", str(config_path)]
    for item in sets:
        args += ["--set", item]
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0
    assert "error:" in err and "Traceback" not in err
    return " ".join(err.split())


def check(capsys, tmp_path, existing_run, config, *sets, expect=()):
    before = digest(existing_run.parent.parent)
    message = run_failing(capsys, write_config(tmp_path, config), *sets)
    for fragment in expect:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert digest(existing_run.parent.parent) == before, "a failing run changed the runs folder"
    return message


def test_unknown_key_with_suggestion(capsys, tmp_path, text_data, existing_run):
    check(
        capsys,
        tmp_path,
        existing_run,
        text_config(text_data, tmp_path),
        "training.epoch=3",
        expect=["training.epoch", "Did you mean 'training.epochs'"],
    )


def test_wrong_type(capsys, tmp_path, text_data, existing_run):
    check(
        capsys,
        tmp_path,
        existing_run,
        text_config(text_data, tmp_path),
        "training.batch_size=large",
        expect=["training.batch_size", "'large'"],
    )


def test_value_out_of_range(capsys, tmp_path, text_data, existing_run):
    check(
        capsys,
        tmp_path,
        existing_run,
        text_config(text_data, tmp_path),
        "head.dropout=0.5",
        "model.head.dropout=1.5",
        expect=["unknown key 'head'", "model.head.dropout", "less than 1"],
    )


def test_missing_data_path(capsys, tmp_path, text_data, existing_run):
    check(
        capsys,
        tmp_path,
        existing_run,
        text_config(text_data, tmp_path),
        f"data.train={tmp_path}/nope.csv",
        expect=["data.train", "nope.csv", "does not exist"],
    )


def test_empty_split(capsys, tmp_path, text_data, existing_run):
    empty = write_csv(tmp_path / "empty.csv", [])
    check(
        capsys,
        tmp_path,
        existing_run,
        text_config(text_data, tmp_path),
        f"data.validation={empty}",
        expect=["validation split", "empty.csv", "no usable records"],
    )


def test_class_with_no_examples(capsys, tmp_path, text_data, existing_run):
    check(
        capsys,
        tmp_path,
        existing_run,
        text_config(text_data, tmp_path),
        "data.classes=[negative, neutral, positive]",
        expect=["['neutral']", "no examples", "data.classes"],
    )


def test_label_not_in_class_list(capsys, tmp_path, text_data, existing_run):
    odd = write_csv(tmp_path / "odd.csv", [("fine flight", "positive"), ("meh flight", "mixed")])
    check(
        capsys,
        tmp_path,
        existing_run,
        text_config(text_data, tmp_path),
        f"data.test={odd}",
        "data.on_bad_record=fail",
        expect=["odd.csv", "row 3", "'mixed'", "not in the class list"],
    )


def test_missing_text_column(capsys, tmp_path, text_data, existing_run):
    check(
        capsys,
        tmp_path,
        existing_run,
        text_config(text_data, tmp_path),
        "data.text_column=tweet",
        expect=["Column 'tweet'", "data.text_column", "['text', 'label']"],
    )


def test_corrupt_image(capsys, tmp_path, digit_data, existing_run):
    import shutil

    train = tmp_path / "train"
    shutil.copytree(digit_data["train"], train)
    (train / "digit_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    check(
        capsys,
        tmp_path,
        existing_run,
        image_config(digit_data, tmp_path),
        f"data.train={train}",
        "data.on_bad_record=fail",
        expect=["broken.png", "corrupt or unreadable image"],
    )


def test_corrupt_image_skipped_is_counted(tmp_path, digit_data):
    import shutil

    from tfsft.config import validate
    from tfsft.data import load_splits
    from tfsft.modalities import get_modality

    train = tmp_path / "train"
    shutil.copytree(digit_data["train"], train)
    (train / "digit_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    config = validate(image_config({**digit_data, "train": str(train)}, tmp_path))
    splits = load_splits(config, get_modality(config).read)
    assert [item.value for item in splits.bad.items] == [str(train / "digit_1" / "broken.jpg")]
    assert len(splits.train) == 300


def test_unreadable_csv_encoding(capsys, tmp_path, text_data, existing_run):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 was great,positive\nawful queue,negative\n".encode("latin-1"))
    check(
        capsys,
        tmp_path,
        existing_run,
        text_config(text_data, tmp_path),
        f"data.train={latin}",
        expect=["latin.csv", "not valid utf-8", "line 2", "data.encoding"],
    )


def test_weights_path_missing(capsys, tmp_path, text_data, existing_run):
    check(
        capsys,
        tmp_path,
        existing_run,
        text_config(text_data, tmp_path),
        f"model.backbone.weights={tmp_path}/missing.weights.h5",
        expect=["model.backbone.weights", "missing.weights.h5", "does not exist"],
    )


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Downloads fail the way they do offline, whether or not this machine has a network: every HTTP(S) request
    goes through a proxy on a loopback port that is bound but not listening (connection refused), and the
    download caches are empty folders, so nothing is found locally either."""
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        proxy = f"http://127.0.0.1:{closed_port.getsockname()[1]}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub_cache"))
        # keras.utils.get_file reads its cache folder (~/.keras) from a value fixed when Keras was imported.
        monkeypatch.setattr("keras.src.backend.config.keras_home", lambda: str(tmp_path / "keras_home"))
        yield


def test_preset_download_without_network(capsys, tmp_path, text_data, existing_run, no_network):
    config = text_config(text_data, tmp_path)
    config["model"]["backbone"] = {"preset": "bert_tiny_en_uncased"}
    message = check(
        capsys,
        tmp_path,
        existing_run,
        config,
        expect=["bert_tiny_en_uncased", "no network", "model.backbone.preset", "folder"],
    )
    assert "save_to_preset" in message


def test_keras_applications_weights_without_network(capsys, tmp_path, digit_data, existing_run, no_network):
    config = image_config(digit_data, tmp_path)
    config["model"]["backbone"] = {"source": "keras_applications", "name": "ResNet50", "weights": "imagenet"}
    check(
        capsys,
        tmp_path,
        existing_run,
        config,
        expect=["ResNet50", "no network", "model.backbone.weights", "resnet50_weights_tf_dim_ordering"],
    )


def test_cli_exit_code_and_no_traceback(tmp_path, text_data):
    config = write_config(tmp_path, text_config(text_data, tmp_path))
    result = run_cli("tfsft.train", "--config", str(config), "--set", "optimizer.nam=sgd", timeout=120)
    assert result.returncode == 2
    assert "Did you mean 'optimizer.name'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()
