"""The text signature computes length-sorted chunks and still answers every text in request order."""

import numpy as np

from conftest import TINY_BERT


def test_sorted_chunks_answer_in_request_order_and_empty_requests_work(tmp_path):
    import tensorflow as tf

    from tfsft.config import validate
    from tfsft.data import Records
    from tfsft.modalities import get_modality
    from tfsft.modalities.text import SERVING_CHUNK
    from tfsft.model import build_model

    config = validate(
        {
            "name": "x",
            "task": {"modality": "text", "type": "classification"},
            "data": {"train": "unused.csv"},
            "text": {"vocabulary": "learn", "max_length": 64},
            "model": {"backbone": TINY_BERT},
        }
    )
    modality = get_modality(config)
    modality.prepare(
        Records(
            {"text": ["good day", "bad night at the gate today"] * 50}, ["p", "n"] * 50, list(range(100)), "inline"
        ),
        tmp_path,
    )
    model = build_model(config, modality, modality.backbone(), 2)
    serve = tf.function(
        lambda t: modality.serving_outputs(model, "serving_default", {"text": t}),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )

    # Lengths interleaved so that sorting reorders them, and more texts than one chunk holds.
    texts = ["good", "a much longer text about the flight and the gate and the crew today", "bad day"] * 7
    assert len(texts) > SERVING_CHUNK
    one_batch = model(modality._trim(modality.tokenize({"text": tf.constant(texts)}), None)[0], training=False)
    np.testing.assert_allclose(serve(tf.constant(texts)).numpy(), one_batch.numpy(), atol=1e-5)
    assert serve(tf.constant([], tf.string)).shape == (0, 2)
