"""No record lost silently: the table reader's quoting rules, per-split bad-record accounting, image folders'
bad_records.csv, and the presentation of errors (unwrapped paragraphs, a quiet TensorFlow start)."""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, image_config, text_config, validated, write_config
from tfsft.data import BadRecords, load_splits
from tfsft.errors import DataError
from tfsft.tables import read_table


def rows(n, start=0):
    return "".join(
        f"flight {i} was {'good' if i % 2 else 'bad'},{['negative', 'positive'][i % 2]}\n" for i in range(start, n)
    )


def read(tmp_path, name, content, fmt, **kwargs):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    bad = BadRecords()
    columns, records = read_table(str(path), fmt, "utf-8", bad, **kwargs)
    return columns, list(records), bad


def test_field_over_128_kib_is_read_with_its_row(tmp_path):
    long_text = "word " * 50_000  # 250 KB: over the csv module's default limit of 131072 characters
    columns, records, bad = read(tmp_path, "long.csv", f"text,label\n{rows(3)}{long_text},positive\n", "csv")
    assert not bad.items
    assert records[-1][0] == 5 and records[-1][1]["text"] == long_text


def test_field_over_the_limit_names_the_line_where_it_starts(tmp_path, monkeypatch):
    monkeypatch.setattr("tfsft.tables.FIELD_LIMIT", 1000)
    content = "text,label\n" + rows(5) + '"opened and never closed,positive\n' + rows(200, 5)
    with pytest.raises(DataError) as caught:
        read(tmp_path, "huge.csv", content, "csv")
    message = str(caught.value)
    assert "huge.csv" in message and "starting on line 7" in message and "never closed" in message


def test_unterminated_quote_counts_every_swallowed_line_from_where_it_starts(tmp_path):
    lines = rows(40).splitlines(keepends=True)
    lines[9] = '"great flight with a quote never closed,positive\n'
    columns, records, bad = read(tmp_path, "u.csv", "text,label\n" + "".join(lines), "csv")
    assert len(records) == 9
    assert [(item.row, item.lines) for item in bad.items] == [(11, 31)]
    assert bad.count(str(tmp_path / "u.csv")) == 31


def test_quote_closed_much_later_is_still_caught(tmp_path):
    lines = rows(40).splitlines(keepends=True)
    lines[9] = '"great flight,positive\n'
    lines[30] = 'he said "hi,negative\n'  # closes the quote opened on line 11: two fields, as the header wants
    columns, records, bad = read(tmp_path, "late.csv", "text,label\n" + "".join(lines), "csv")
    assert [item.row for item in bad.items] == [11]
    assert bad.items[0].lines == 22
    assert len(records) == 40 - 22


def test_legit_multi_line_field_is_one_record_with_a_warning(tmp_path, caplog):
    content = 'text,label\n"first line\nsecond line",positive\n' + rows(4)
    with caplog.at_level(logging.WARNING, logger="tfsft.tables"):
        columns, records, bad = read(tmp_path, "multi.csv", content, "csv")
    assert not bad.items
    assert records[0] == (2, {"text": "first line\nsecond line", "label": "positive"})
    assert records[1][0] == 4  # the next record starts on line 4
    assert "line breaks inside quoted fields" in caplog.text and "line 2" in caplog.text


def test_tsv_has_no_quote_processing_by_default(tmp_path):
    content = (
        "text\tlabel\n"
        + rows(3).replace(",", "\t")
        + '"quoted start of a tweet\tpositive\n'
        + rows(23, 3).replace(",", "\t")
    )
    columns, records, bad = read(tmp_path, "t.tsv", content, "tsv")
    assert not bad.items and len(records) == 24
    assert records[3] == (5, {"text": '"quoted start of a tweet', "label": "positive"})


def test_tsv_quote_rules_when_configured(tmp_path):
    content = 'text\tlabel\n"a\ttab inside"\tpositive\n' + rows(3).replace(",", "\t")
    columns, records, bad = read(tmp_path, "q.tsv", content, "tsv", quoting="double_quote")
    assert records[0][1] == {"text": "a\ttab inside", "label": "positive"}


def test_jsonl_first_line_broken_is_one_bad_record(tmp_path):
    import json

    lines = ['{"text": "oops",'] + [json.dumps({"text": f"t{i}", "label": "a"}) for i in range(5)]
    columns, records, bad = read(tmp_path, "f.jsonl", "\n".join(lines) + "\n", "jsonl")
    assert columns == ["text", "label"] and len(records) == 5
    assert [item.row for item in bad.items] == [1]


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    import json

    text = "first\u2028second"
    columns, records, bad = read(
        tmp_path, "s.jsonl", json.dumps({"text": text, "label": "a"}, ensure_ascii=False) + "\n", "jsonl"
    )
    assert not bad.items and records[0][1]["text"] == text


def test_unknown_training_labels_count_towards_max_bad_fraction(tmp_path, text_data):
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + rows(20) + "".join(f"meh {i},mixed\n" for i in range(5)))
    config = validated(
        text_config({**text_data, "train": str(train)}, tmp_path, data={"classes": ["negative", "positive"]})
    )
    from tfsft.modalities.text import TextModality

    with pytest.raises(DataError, match=r"5 of 25 records .*'mixed'"):
        load_splits(config, TextModality(config).read)


def test_image_folder_bad_records_have_file_paths_and_clean_reasons(tmp_path, digit_data):
    train = tmp_path / "train"
    shutil.copytree(digit_data["train"], train)
    (train / "digit_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (train / "digit_2" / "readme.txt").write_text("notes")
    config = validated(image_config({**digit_data, "train": str(train)}, tmp_path))
    from tfsft.modalities.image import ImageModality

    splits = load_splits(config, ImageModality(config).read)
    out = tmp_path / "bad_records.csv"
    splits.bad.write(out)
    listed = {row["row"]: row for row in csv.DictReader(open(out))}
    assert set(listed) == {"digit_1/broken.png", "digit_2/readme.txt"}
    reason = listed["digit_1/broken.png"]["reason"]
    assert "function_node" not in reason and "[Op:" not in reason and "image" in reason.lower()


def test_metric_names_checked_by_the_config_are_the_ones_compiled(tmp_path, text_data):
    from tfsft.config_checks import TASK_METRICS
    from tfsft.model import metrics_for

    for task, names in TASK_METRICS.items():
        config = validated(text_config(text_data, tmp_path, task={"modality": "text", "type": task}))
        assert tuple(m.name for m in metrics_for(config, 3)) == names


def test_error_paragraph_keeps_paths_urls_and_keys_whole(capsys):
    from tfsft.cli import run_main

    path = "/data/bad-inputs/very-long-folder-name-with-hyphens/and-more-hyphens/train-2024-01-01.csv"

    def fail():
        raise DataError(
            f"data.train = '{path}' failed; see https://example.org/a-very-long-url-with-hyphens "
            f"and training.early_stopping.monitor. " + "More words to pass any wrap width. " * 6
        )

    assert run_main(fail) == 2
    err = capsys.readouterr().err
    assert path in err and "https://example.org/a-very-long-url-with-hyphens" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_start_is_quiet_and_the_error_is_one_paragraph(tmp_path, text_data):
    """A real `python -m tfsft.train` that imports TensorFlow, then refuses the data: no C++ start-up lines."""
    lines = rows(40).splitlines(keepends=True)
    lines[9] = '"never closed,positive\n'
    bad = tmp_path / "bad-inputs" / "train.csv"
    bad.parent.mkdir()
    bad.write_text("text,label\n" + "".join(lines))
    config = write_config(tmp_path, text_config({**text_data, "train": str(bad)}, tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    result = subprocess.run(
        [sys.executable, "-m", "tfsft.train", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 2
    for noise in ("cuInit", "absl", "cuda", "oneDNN custom operations", "Traceback"):
        assert noise not in result.stderr, result.stderr
    assert str(bad) in result.stderr and "line 11" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_tf_log_level_the_user_set_is_kept_and_verbose_shows_everything(monkeypatch):
    from tfsft.cli import prepare_tensorflow_import

    monkeypatch.delenv("TFSFT_SET_TF_LOG_LEVEL", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    prepare_tensorflow_import()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    prepare_tensorflow_import(verbose=True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_remote_preset_without_network_fails_fast_and_says_so(monkeypatch):
    import time

    from tfsft.backbones import load_backbone, reachable
    from tfsft.config import BackboneConfig
    from tfsft.errors import BackboneError

    started = time.monotonic()
    assert not reachable("no-such-host.invalid")
    monkeypatch.setattr("tfsft.backbones.reachable", lambda host: False)  # offline, even on a machine with network
    with pytest.raises(BackboneError) as caught:
        load_backbone(BackboneConfig(preset="hf://google-bert/bert-base-uncased"))
    assert time.monotonic() - started < 10  # huggingface_hub alone retries for ~30 s
    message = str(caught.value)
    assert "hf://google-bert/bert-base-uncased" in message and "network" in message and "huggingface.co" in message
