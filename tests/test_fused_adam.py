"""tfsft's Adam/AdamW apply Keras's update formula through one fused kernel per variable: same weights as Keras."""

import numpy as np
import pytest


def _train(optimizer_cls, **kwargs):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(50, 8),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        optimizer=optimizer_cls(learning_rate=1e-2, **kwargs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.RandomState(1).randint(0, 50, (64, 5))  # the embedding's gradient is sparse (IndexedSlices)
    y = np.random.RandomState(2).randint(0, 3, 64)
    before = [w.numpy().copy() for w in model.weights]
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    return before, [w.numpy() for w in model.weights]


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("AdamW", {"weight_decay": 0.1, "global_clipnorm": 1.0}),
        ("Adam", {"beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6}),
    ],
)
def test_fused_update_matches_keras(name, kwargs):
    import keras

    from tfsft import optim

    start, fused = _train(getattr(optim, name), **kwargs)
    _, reference = _train(getattr(keras.optimizers, name), **kwargs)
    for s, f, r in zip(start, fused, reference):
        assert np.abs(f - s).max() > 1e-3  # every variable moved ...
        np.testing.assert_allclose(f, r, atol=2e-6)  # ... exactly as Keras's own update moves it
