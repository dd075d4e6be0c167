"""The private Keras names tfsft relies on (tfsft/keras_internals.py) still exist, in the Keras version they were
read against. A failure here means: re-read each override in tfsft/keras_internals.py against the installed Keras
source before moving CHECKED_AGAINST and the pin in pyproject.toml."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import keras
import pytest

from tfsft import keras_internals

REPO = Path(__file__).resolve().parent.parent


def test_installed_keras_is_the_minor_version_the_internals_were_checked_against():
    assert keras_internals.keras_minor() == keras_internals.CHECKED_AGAINST, (
        f"Keras {keras.__version__} is installed; tfsft's private-API overrides were checked against "
        f"{keras_internals.CHECKED_AGAINST}. Re-read tfsft/keras_internals.py against it first."
    )


def test_the_pyproject_pin_allows_exactly_the_checked_minor_version():
    pin = re.search(r'"keras>=([\d.]+),<([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin, "pyproject.toml pins keras as >=X.Y,<X.Z"
    low, high = pin.groups()
    major, minor = map(int, keras_internals.CHECKED_AGAINST.split("."))
    assert keras_internals.keras_minor(low) == keras_internals.CHECKED_AGAINST
    assert high == f"{major}.{minor + 1}"


@pytest.mark.parametrize(
    "owner,name",
    keras_internals.PRIVATE_ATTRIBUTES,
    ids=[f"{o.__name__}.{n}" for o, n in keras_internals.PRIVATE_ATTRIBUTES],
)
def test_private_method_exists(owner, name):
    assert callable(getattr(owner, name, None)), f"{owner.__name__}.{name} is gone from Keras {keras.__version__}"


@pytest.mark.parametrize("module,name", keras_internals.PRIVATE_MODULE_NAMES)
def test_private_module_name_exists(module, name):
    assert hasattr(importlib.import_module(module), name), f"{module}.{name} is gone from Keras {keras.__version__}"


def test_built_optimizer_has_the_private_state_the_overrides_use():
    from tfsft.optim import AdamW

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = AdamW(learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5), weight_decay=0.1)
    optimizer.build(model.trainable_variables)
    kernel, bias = model.trainable_variables
    assert len(optimizer._momentums) == len(optimizer._velocities) == 2
    assert optimizer._get_variable_index(bias) == 1
    assert isinstance(optimizer._learning_rate, keras.optimizers.schedules.ExponentialDecay)
    keras_internals.add_weight_decay_exclusions(optimizer, [bias])
    assert keras_internals.uses_weight_decay(optimizer, kernel) and not keras_internals.uses_weight_decay(
        optimizer, bias
    )
    assert keras_internals.variable_key(optimizer, kernel) != keras_internals.variable_key(optimizer, bias)


def test_untracked_scope_stores_plain_containers_as_they_are_and_still_tracks_variables(tmp_path):
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.trackable import data_structures

    original = data_structures.sticky_attribute_assignment
    layer = keras.layers.Layer()
    with keras_internals.plain_containers_untracked():
        layer.vocabulary = ["[PAD]", "[UNK]", "hello"]
        layer.ids = {"[PAD]": 0, "[UNK]": 1, "hello": 2}
        layer.tables = [tf.Variable([1.0, 2.0])]  # holds a trackable: TensorFlow still tracks it
    assert type(layer.vocabulary) is list and type(layer.ids) is dict
    assert data_structures.sticky_attribute_assignment is original

    checkpoint = tf.train.Checkpoint(layer=layer)
    path = checkpoint.write(str(tmp_path / "ckpt"))
    layer.tables[0].assign([0.0, 0.0])
    checkpoint.read(path).assert_consumed()
    np.testing.assert_array_equal(layer.tables[0].numpy(), [1.0, 2.0])


def test_untracked_scope_restores_tracking_after_an_error():
    from tensorflow.python.trackable import data_structures

    original = data_structures.sticky_attribute_assignment
    with pytest.raises(RuntimeError):
        with keras_internals.plain_containers_untracked():
            raise RuntimeError("boom")
    assert data_structures.sticky_attribute_assignment is original
    from keras.src.utils.tracking import DotNotTrackScope

    layer = keras.layers.Layer()
    with DotNotTrackScope():  # Keras's walk off, as in the scope: TensorFlow's wrapping is back
        layer.vocabulary = ["a", "b"]
    assert isinstance(layer.vocabulary, data_structures.ListWrapper)


def test_functional_graph_accessors_find_the_producing_layer_and_its_calls():
    inputs = keras.Input((3,))
    shared = keras.layers.Dense(3, name="shared")
    hidden = shared(shared(inputs))
    outputs = keras.layers.Dense(1, name="out")(hidden)
    keras.Model(inputs, outputs)
    assert keras_internals.producing_layer(outputs).name == "out"
    assert keras_internals.producing_layer(hidden) is shared
    assert keras_internals.times_called_in_graphs(shared) == 2
    assert keras_internals.producing_layer(None) is None


@pytest.mark.parametrize("name", keras_internals.PRIVATE_VARIABLE_METHODS)
def test_tensorflow_variable_method_exists(name):
    from keras.src.backend.tensorflow.core import Variable

    assert callable(getattr(Variable, name, None)), f"Variable.{name} is gone from Keras {keras.__version__}"


def test_the_eager_context_keeps_the_config_function_calls_are_made_with():
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.eager import context

    ctx = context.context()
    assert ctx._config is None or isinstance(ctx._config, config_pb2.ConfigProto)
    assert hasattr(ctx._thread_local_data, "function_call_options")
    ours = config_pb2.ConfigProto.FromString(ctx.function_call_options.config_proto_serialized)
    # `config` (what each thread's options are made from) starts from `_config`: runtime.py's settings reach it
    assert ours.graph_options.rewrite_options == ctx.config.graph_options.rewrite_options
