"""tfsft's Adam/AdamW apply Keras's update formula through one fused kernel per variable: same weights as Keras.

An embedding's gradient arrives sparse (IndexedSlices, one row per token occurrence). Keras's own Adam computes
`square(gradient)` on those rows before they are summed, so a row used twice in a batch gets g1² + g2² in its
second moment instead of (g1 + g2)²; every other part of its update is dense anyway (Keras issue #19992). tfsft sums
the rows first: the textbook Adam, as PyTorch and TensorFlow's own kernel compute it. The reference below is
therefore Keras's update on the summed (dense) gradient. Global-norm clipping likewise: Keras's norm of a sparse
gradient sums its rows' squares before the rows; tfsft's is the dense gradient's norm, as PyTorch's
`clip_grad_norm_` computes it."""

import numpy as np
import pytest


def _on_dense_gradients(optimizer_cls):
    """Keras's own optimizer, given each sparse gradient summed into a dense one."""
    import tensorflow as tf

    class OnDenseGradients(optimizer_cls):
        def _clip_gradients(self, grads):
            # Keras squares a sparse gradient's rows before summing them here too (its global norm counts a row
            # used twice as g1² + g2²); tfsft clips by the norm of the dense gradient, as PyTorch does.
            return super()._clip_gradients([tf.convert_to_tensor(g) if g is not None else g for g in grads])

        def update_step(self, gradient, variable, learning_rate):
            if isinstance(gradient, tf.IndexedSlices):
                gradient = tf.convert_to_tensor(gradient)
            return super().update_step(gradient, variable, learning_rate)

    return OnDenseGradients


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
    _, reference = _train(_on_dense_gradients(getattr(keras.optimizers, name)), **kwargs)
    for s, f, r in zip(start, fused, reference):
        assert np.abs(f - s).max() > 1e-3  # every variable moved ...
        np.testing.assert_allclose(f, r, atol=2e-6)  # ... exactly as Keras's own update moves it


def test_a_row_used_twice_in_a_batch_gets_the_square_of_its_summed_gradient():
    import keras
    import tensorflow as tf

    from tfsft import optim

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,), dtype="int32"), keras.layers.Embedding(10, 2), keras.layers.Flatten()])
    optimizer = optim.Adam(learning_rate=0.1)
    model.compile(optimizer=optimizer, loss="mse")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(tf.constant([[3, 3]])) * tf.constant([[1.0, 2.0, -3.0, 0.5]]))
    gradients = tape.gradient(loss, model.trainable_variables)
    assert isinstance(gradients[0], tf.IndexedSlices)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    summed = np.array([1.0 - 3.0, 2.0 + 0.5])  # row 3's two occurrences
    velocity = optimizer._velocities[0].numpy()
    np.testing.assert_allclose(velocity[3], (1 - optimizer.beta_2) * summed**2, rtol=1e-4)  # float32 1 - beta_2
    assert not velocity[[0, 1, 2, 4]].any()  # rows outside the batch: nothing to add


@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_global_norm_clipping_that_engages_matches_keras(name):
    import keras

    from tfsft import optim

    kwargs = {"global_clipnorm": 0.01, **({"weight_decay": 0.1} if name == "AdamW" else {"momentum": 0.9})}
    start, ours = _train(getattr(optim, name), **kwargs)
    _, reference = _train(_on_dense_gradients(getattr(keras.optimizers, name)), **kwargs)
    _, unclipped = _train(getattr(optim, name), **{k: v for k, v in kwargs.items() if k != "global_clipnorm"})
    for s, o, r in zip(start, ours, reference):
        assert np.abs(o - s).max() > 1e-5  # every variable moved ...
        np.testing.assert_allclose(o, r, atol=2e-6)  # ... as with Keras's own clipping ...
    assert any(np.abs(o - u).max() > 1e-4 for o, u in zip(ours, unclipped))  # ... which did engage


def test_clipped_gradients_and_norm_equal_keras_on_sparse_rows_used_twice():
    import tensorflow as tf
    from keras.src.optimizers.base_optimizer import clip_by_global_norm

    from tfsft import optim
    from tfsft.clipping import global_norm

    dense = tf.constant([[3.0, -4.0], [1.0, 2.0]])
    sparse = tf.IndexedSlices(tf.constant([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]), tf.constant([4, 1, 4]), [6, 2])
    optimizer = optim.AdamW(learning_rate=0.1, global_clipnorm=2.0)
    ours = [None if g is None else tf.convert_to_tensor(g) for g in optimizer._clip_gradients([dense, None, sparse])]
    keras_clipped = clip_by_global_norm([dense, tf.convert_to_tensor(sparse)], 2.0)
    np.testing.assert_allclose(ours[0], keras_clipped[0], rtol=1e-6)
    np.testing.assert_allclose(ours[2], keras_clipped[1], rtol=1e-6)
    assert isinstance(optimizer._clip_gradients([sparse])[0], tf.IndexedSlices)  # stays sparse, one row per index
    expected = np.sqrt(9 + 16 + 1 + 4 + 1.5**2 + 2.5**2 + 3**2 + 1)  # rows 4 summed: (1.5, 2.5)
    np.testing.assert_allclose(global_norm([dense, None, sparse]), expected, rtol=1e-6)
    not_finite = optimizer._clip_gradients([tf.constant([np.inf, 1.0])])[0]
    assert np.isnan(not_finite.numpy()).all()  # as Keras: a non-finite norm makes every gradient NaN
