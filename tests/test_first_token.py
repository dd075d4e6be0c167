"""A head that reads only the first token: the last encoder layer computes that token only, with the same answers
and the same gradients as the full layer; every other head and backbone structure keeps the full layer."""

import numpy as np
import pytest

from conftest import TINY_BERT


def tiny_bert(num_layers=3, dropout=0.0):
    import keras_hub

    kwargs = {**TINY_BERT["kwargs"], "num_layers": num_layers, "dropout": dropout}
    return keras_hub.models.BertBackbone(vocabulary_size=100, **kwargs)


def padded_batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, size=(4, 12)).astype("int32")
    mask = np.ones_like(ids)
    for row, length in enumerate([12, 7, 3, 9]):
        mask[row, length:] = 0
    ids[mask == 0] = 0
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


def outputs_and_gradients(backbone, batch, training=False):
    import tensorflow as tf

    head = tf.constant(np.random.default_rng(1).normal(size=(32,)), tf.float32)
    with tf.GradientTape() as tape:
        out = backbone(batch, training=training)
        loss = tf.reduce_sum(out["sequence_output"][:, 0] * head) + tf.reduce_sum(out["pooled_output"] * head)
    grads = tape.gradient(loss, backbone.trainable_variables)
    return out, {v.path: tf.convert_to_tensor(g) for v, g in zip(backbone.trainable_variables, grads) if g is not None}


def test_first_token_only_answers_and_learns_like_the_full_last_layer():
    from keras_hub.layers import TransformerEncoder

    from tfsft.first_token import FirstTokenTransformerEncoder, compute_first_token_only

    backbone, batch = tiny_bert(), padded_batch()
    full, full_grads = outputs_and_gradients(backbone, batch)

    assert compute_first_token_only(backbone, "cls")
    last = backbone.get_layer("transformer_layer_2")
    assert type(last) is FirstTokenTransformerEncoder
    assert type(backbone.get_layer("transformer_layer_1")) is TransformerEncoder  # only the last layer
    short, short_grads = outputs_and_gradients(backbone, batch)

    assert short["sequence_output"].shape == (4, 1, 32)
    np.testing.assert_allclose(short["sequence_output"][:, 0], full["sequence_output"][:, 0], atol=1e-5)
    np.testing.assert_allclose(short["pooled_output"], full["pooled_output"], atol=1e-5)
    assert set(short_grads) == set(full_grads)
    last_layer_grads = [path for path in full_grads if "transformer_layer_2" in path]
    assert len(last_layer_grads) >= 10  # attention, feed-forward and both layer norms are in the comparison
    for path, grad in full_grads.items():
        np.testing.assert_allclose(short_grads[path], grad, rtol=1e-5, atol=1e-5, err_msg=path)


def test_with_dropout_training_draws_the_full_layers_masks():
    """In training, the last layer's three dropouts (attention probabilities, attention output, feed-forward output)
    apply at position 0 the masks the full layer draws there: the same outputs and gradients as the full layer
    from the same random state, so a run takes the same random path with or without the shortcut."""
    from tfsft.first_token import compute_first_token_only

    backbone, batch = tiny_bert(dropout=0.3), padded_batch()
    random_state = [v for v in backbone.non_trainable_variables if "seed_generator" in v.path]
    assert len(random_state) >= 3 * 3  # every encoder layer's three dropouts each have their own generator
    start = [v.numpy() for v in random_state]
    full, full_grads = outputs_and_gradients(backbone, batch, training=True)
    redrawn, _ = outputs_and_gradients(backbone, batch, training=True)  # the generators moved on: other masks
    assert np.abs(np.asarray(redrawn["pooled_output"]) - np.asarray(full["pooled_output"])).max() > 1e-3

    assert compute_first_token_only(backbone, "cls")
    for variable, value in zip(random_state, start):
        variable.assign(value)
    short, short_grads = outputs_and_gradients(backbone, batch, training=True)
    np.testing.assert_allclose(short["sequence_output"][:, 0], full["sequence_output"][:, 0], atol=1e-5)
    np.testing.assert_allclose(short["pooled_output"], full["pooled_output"], atol=1e-5)
    assert set(short_grads) == set(full_grads)
    for path, grad in full_grads.items():
        np.testing.assert_allclose(short_grads[path], grad, rtol=1e-5, atol=1e-5, err_msg=path)
    attention = backbone.get_layer("transformer_layer_2")._self_attention_layer
    assert type(attention._dropout_layer).__name__ == "Dropout"  # the swap during the call was undone


def test_calls_from_several_threads_leave_the_attention_dropout_in_place():
    from concurrent.futures import ThreadPoolExecutor

    import keras

    from tfsft.first_token import compute_first_token_only

    backbone, batch = tiny_bert(num_layers=1, dropout=0.1), padded_batch()
    assert compute_first_token_only(backbone, "cls")
    with ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda _: backbone(batch, training=True)["sequence_output"].shape, range(16)))
    assert shapes == [(4, 1, 32)] * 16
    attention = backbone.get_layer("transformer_layer_0")._self_attention_layer
    assert type(attention._dropout_layer) is keras.layers.Dropout


@pytest.mark.parametrize("pooling", ["mean", "max", "auto"])
def test_heads_that_read_every_token_keep_the_full_layer(pooling):
    from keras_hub.layers import TransformerEncoder

    from tfsft.first_token import compute_first_token_only

    backbone = tiny_bert(num_layers=2)
    assert not compute_first_token_only(backbone, pooling)
    assert type(backbone.get_layer("transformer_layer_1")) is TransformerEncoder
    assert backbone(padded_batch())["sequence_output"].shape == (4, 12, 32)


def test_a_last_layer_shared_across_the_stack_keeps_the_full_layer():
    """ALBERT applies one encoder layer several times: computing one token would change its earlier calls."""
    import keras_hub
    from keras_hub.layers import TransformerEncoder

    from tfsft.first_token import compute_first_token_only, last_encoder_if_first_token_suffices

    backbone = keras_hub.models.AlbertBackbone(
        vocabulary_size=100,
        num_layers=2,
        num_heads=2,
        embedding_dim=16,
        hidden_dim=32,
        intermediate_dim=64,
        num_groups=1,
        num_inner_repetitions=1,
        max_sequence_length=32,
    )
    layer, why_not = last_encoder_if_first_token_suffices(backbone)
    assert layer is None and "shared" in why_not
    assert not compute_first_token_only(backbone, "cls")
    assert all(
        type(sub) is TransformerEncoder for sub in backbone._flatten_layers() if isinstance(sub, TransformerEncoder)
    )


def test_cls_model_saved_and_loaded_computes_the_first_token_only_again(tmp_path):
    import keras_hub
    import tensorflow as tf

    from tfsft.config import validate
    from tfsft.data import Records
    from tfsft.first_token import FirstTokenTransformerEncoder
    from tfsft.modalities import get_modality
    from tfsft.model import build_model
    from tfsft.runs import load_model_file

    config = validate(
        {
            "name": "x",
            "task": {"modality": "text", "type": "classification"},
            "data": {"train": "unused.csv"},
            "text": {"vocabulary": "learn", "max_length": 32},
            "model": {"backbone": TINY_BERT, "head": {"pooling": "cls"}},
        }
    )
    modality = get_modality(config)
    modality.prepare(Records({"text": ["good day", "bad night at the gate"] * 20}, ["p", "n"] * 20, [], ""), tmp_path)
    backbone = modality.backbone()
    model = build_model(config, modality, backbone, 2)
    assert type(backbone.get_layer("transformer_layer_1")) is FirstTokenTransformerEncoder
    features = modality._trim(modality.tokenize({"text": tf.constant(["good", "a longer bad text", "day"])}), None)
    expected = model(features[0], training=False)

    model.save(tmp_path / "model.keras")
    loaded = load_model_file(tmp_path / "model.keras")
    modality.adopt_loaded_model(loaded)  # what tfsft.runs.load_run does
    backbones = [layer for layer in loaded.layers if isinstance(layer, keras_hub.models.Backbone)]
    assert type(backbones[0].get_layer("transformer_layer_1")) is FirstTokenTransformerEncoder
    np.testing.assert_allclose(loaded(features[0], training=False), expected, atol=1e-5)


def test_the_encoder_internals_it_reads_exist():
    """keras-hub is pinned to a minor version: these private names are what a new minor may move."""
    import keras_hub.src.layers.modeling.transformer_layer_utils as utils

    from tfsft.first_token import ENCODER_SUBLAYERS

    assert callable(getattr(utils, "merge_padding_and_attention_mask", None))
    layer = tiny_bert(num_layers=1).get_layer("transformer_layer_0")
    import keras

    for name in ENCODER_SUBLAYERS:
        assert isinstance(getattr(layer, name, None), keras.layers.Layer), f"TransformerEncoder.{name} is gone"
    # The attention sublayer applies its dropout through this attribute (swapped for the first-token call).
    assert isinstance(getattr(layer._self_attention_layer, "_dropout_layer", None), keras.layers.Dropout)
