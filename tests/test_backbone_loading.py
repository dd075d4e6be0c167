"""A preset backbone is built without random initial values that its checkpoint would overwrite
(tfsft/keras_internals.py `initial_values_left_to_checkpoint`), and never keeps a weight the checkpoint left unset."""

from __future__ import annotations

import numpy as np

from tfsft import backbones, keras_internals
from tfsft.config import BackboneConfig


def _tiny_bert():
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=24
    )


def test_a_preset_loads_the_checkpoints_weights_and_nothing_else(tmp_path):
    saved = _tiny_bert()
    saved.save_to_preset(str(tmp_path / "preset"))

    loaded = backbones.load_backbone(BackboneConfig(preset=str(tmp_path / "preset")))

    assert [w.path for w in loaded.weights] == [w.path for w in saved.weights]
    for ours, theirs in zip(loaded.weights, saved.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)


def test_only_floating_point_variables_start_unset_and_the_unset_ones_are_named():
    import keras

    with keras_internals.initial_values_left_to_checkpoint() as created:
        dense = keras.layers.Dense(3)
        dense.build((None, 4))
        seeds = keras.random.SeedGenerator(7)
    dense.kernel.assign(np.ones((4, 3), "float32"))  # a "checkpoint" that sets the kernel and not the bias

    assert {v.path for v in created} == {dense.kernel.path, dense.bias.path}
    assert keras_internals.still_unset(created) == [dense.bias.path]
    np.testing.assert_array_equal(seeds.state.numpy(), keras.random.SeedGenerator(7).state.numpy())
    # Outside the scope, initializers run again.
    after = keras.layers.Dense(3)
    after.build((None, 4))
    assert np.isfinite(after.kernel.numpy()).all() and np.abs(after.kernel.numpy()).sum() > 0


def test_a_checkpoint_that_leaves_a_weight_unset_gets_the_initializers_values(monkeypatch, tmp_path):
    import keras
    import keras_hub

    calls = []

    def half_loading_preset(location, **kwargs):  # builds, then "loads" only the kernel
        calls.append(location)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, bias_initializer="ones")])
        model.layers[0].kernel.assign(np.full((4, 3), 0.5, "float32"))
        return model

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", half_loading_preset)
    loaded = backbones.load_backbone(BackboneConfig(preset=str(tmp_path)))

    assert len(calls) == 2  # built again, the normal way
    np.testing.assert_array_equal(loaded.layers[0].bias.numpy(), np.ones(3, "float32"))
    np.testing.assert_array_equal(loaded.layers[0].kernel.numpy(), np.full((4, 3), 0.5, "float32"))
