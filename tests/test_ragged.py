"""The tokenizer is traced without the ragged tensors' validity checks, and answers exactly as with them; outside
tfsft's tokenizer, `tf.RaggedTensor` checks as TensorFlow does."""

import threading

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_BERT, validated
from tfsft.ragged import unvalidated_ragged_tensors

BAD_SPLITS = [0, 5, 3]  # decreasing splits over 3 values: what the checks exist to catch


def graph_ops(function, *specs) -> list[str]:
    """Op types of a traced function's graph, nested functions (cond branches) included."""
    graph = function.get_concrete_function(*specs).graph.as_graph_def()
    types = [node.op for node in graph.node]
    for library_function in graph.library.function:
        types += [node.op for node in library_function.node_def]
    return types


def ragged_from_splits():
    return tf.function(lambda values, splits: tf.RaggedTensor.from_row_splits(values, splits).row_lengths())


def test_checks_are_skipped_inside_and_back_outside():
    specs = (tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int64))
    assert "Assert" in graph_ops(ragged_from_splits(), *specs)
    with unvalidated_ragged_tensors():
        assert "Assert" not in graph_ops(ragged_from_splits(), *specs)
        tf.RaggedTensor.from_row_splits([1, 2, 3], BAD_SPLITS)  # eagerly too: not checked
    assert "Assert" in graph_ops(ragged_from_splits(), *specs)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.RaggedTensor.from_row_splits([1, 2, 3], BAD_SPLITS)


def test_nested_and_failing_uses_restore_tensorflows_factories():
    originals = dict(vars(tf.RaggedTensor))
    with pytest.raises(RuntimeError), unvalidated_ragged_tensors():
        with unvalidated_ragged_tensors():
            pass
        tf.RaggedTensor.from_row_lengths([1, 2], [3])  # still unchecked inside the outer block after the inner left
        raise RuntimeError("the tokenizer failed")
    assert {name: vars(tf.RaggedTensor)[name] for name in originals} == originals
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.RaggedTensor.from_row_lengths([1, 2], [3])


def test_a_thread_leaving_early_does_not_switch_the_checks_back_on_for_another():
    entered, release = threading.Event(), threading.Event()

    def other_thread():
        with unvalidated_ragged_tensors():
            entered.set()
            release.wait(10)

    worker = threading.Thread(target=other_thread)
    worker.start()
    entered.wait(10)
    with unvalidated_ragged_tensors():
        release.set()
        worker.join(10)
        tf.RaggedTensor.from_row_splits([1, 2, 3], BAD_SPLITS)  # the other thread left; this one is still inside
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.RaggedTensor.from_row_splits([1, 2, 3], BAD_SPLITS)


def test_the_tokenizer_answers_as_with_checks_and_traces_fewer_of_them(tmp_path):
    from tfsft.data import Records
    from tfsft.modalities import get_modality

    config = validated(
        {
            "name": "x",
            "task": {"modality": "text", "type": "classification"},
            "data": {"train": "unused.csv"},
            "text": {"vocabulary": "learn", "vocabulary_size": 120, "max_length": 12},
            "model": {"backbone": TINY_BERT},
        }
    )
    train = ["the film was great", "awful plot, great cast!", "meh", "ok ok ok ok"] * 5
    modality = get_modality(config)
    modality.prepare(Records({"text": train}, ["a"] * len(train), list(range(len(train))), "inline"), tmp_path)
    texts = tf.constant(["", "great", "the film was great " * 10, "¿qué? 😀 #tag @user", "   ", "a" * 300])
    checked_ids = modality.packer(modality.tokenizer(texts))[0]  # TensorFlow's own path, eagerly: all validated
    ours = modality._tokenize_batch({"text": texts})
    np.testing.assert_array_equal(ours["token_ids"], checked_ids)
    np.testing.assert_array_equal(ours["padding_mask"], checked_ids != modality.tokenizer.pad_token_id)

    spec = {"text": tf.TensorSpec([None], tf.string)}
    with_checks = tf.function(lambda f: modality.packer(modality.tokenizer(f["text"]))[0], autograph=False)
    asserts_with = graph_ops(with_checks, spec).count("Assert")
    asserts_without = graph_ops(modality._tokenize_batch, spec).count("Assert")
    assert asserts_without < asserts_with, (asserts_without, asserts_with)
