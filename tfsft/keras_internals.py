"""Every private Keras API tfsft relies on, fenced in one module with the Keras version it was checked against.

Keras promises nothing about underscore names or `keras.src`, and tfsft needs a few of them. Each one used by
the optimizer, freezing and logging code is reached through this module only; tests/test_keras_internals.py
fails when the installed Keras minor version differs from `CHECKED_AGAINST` or when one of the names below
disappears. A Keras upgrade is therefore a deliberate act: re-read each override here against the new Keras
source, then move `CHECKED_AGAINST` and the pin in pyproject.toml (`keras>=3.15,<3.16`) together.

Inventory (all checked against Keras 3.15):

- Optimizer: `_var_key` (a variable's stable key, the same for every replica of a distributed variable),
  `_use_weight_decay`, `_exclude_from_weight_decay` / `_exclude_from_weight_decay_cache` (adding exclusions),
  `_learning_rate` (the schedule object behind the `learning_rate` property), `_clip_gradients` (wrapped by the
  gradient-norm probe of step_logging, overridden for `global_clipnorm`: `SinglePassGlobalNormClipping`).
- Overridden optimizer methods: `_apply_weight_decay` (decoupled decay at each variable's own learning rate:
  `PerVariableWeightDecay`) and `_backend_update_step` with `_get_variable_index`, `_momentums`,
  `_velocities` (the fused Adam kernel: `FusedAdamUpdate`).
- Layers: `_flatten_layers` (every sublayer of a backbone, for freezing and for the layer norms' and dropouts'
  closed-form gradients).
- Dropout's random draw: `keras.src.random.seed_generator.draw_seed` and the TensorFlow backend's
  `random._cast_seed` / `random._get_concrete_noise_shape` (`dropout_seed_and_noise_shape`: the seed and mask shape
  Keras's own dropout uses, for tfsft/dropout_gradient.py).
- Metrics: `FBetaScore._build` (`build_f_score`: F1's state created before the train step is traced).
- `keras.src.losses.loss.scale_loss_for_distribution` (tfsft/regularization.py, through this module).
- Attribute tracking: `keras.src.utils.tracking.DotNotTrackScope` and TensorFlow's
  `tensorflow.python.trackable.data_structures.sticky_attribute_assignment` (`plain_containers_untracked`: the
  tokenizer's vocabulary stored without either walk).
- Saving: `keras.src.saving.saving_lib.save_weights_only(..., objects_to_skip=)` (`save_weights_without_optimizer`:
  best.weights.h5 without Adam's two slots per weight).
- Variable creation: `keras.src.backend.tensorflow.core.Variable._initialize_with_initializer` / `_initialize`
  (`initial_values_left_to_checkpoint`: a preset backbone's weights are not drawn at random only to be
  overwritten by its checkpoint).
- Imported or patched where they are used, listed here so that the version check covers them:
  `keras.src.backend.tensorflow.trainer.reduce_per_replica` / `Model._maybe_symbolic_build` (the multi-worker
  patches of tfsft/distribute.py); TensorFlow's `tensorflow.python.framework.ops._create_c_op` and its
  `extract_traceback` switch (tfsft/runtime.py: graph ops built without their Python stacks; TensorFlow 2.21), and
  the eager context's `_config` and per-thread `_thread_local_data.function_call_options` (tfsft/runtime.py:
  grappler's settings for every function call; checked in tests/test_keras_internals.py).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf
from keras import ops

from tfsft.clipping import dense_rows, global_norm

CHECKED_AGAINST = "3.15"  # major.minor of the Keras every name below was read against

# (owner, attribute) pairs tests/test_keras_internals.py checks exist; instance attributes are checked on a built
# optimizer there.
PRIVATE_ATTRIBUTES = [
    (keras.optimizers.Optimizer, "_var_key"),
    (keras.optimizers.Optimizer, "_use_weight_decay"),
    (keras.optimizers.Optimizer, "_apply_weight_decay"),
    (keras.optimizers.Optimizer, "_backend_update_step"),
    (keras.optimizers.Optimizer, "_get_variable_index"),
    (keras.optimizers.Optimizer, "_clip_gradients"),
    (keras.layers.Layer, "_flatten_layers"),
    (keras.Model, "_maybe_symbolic_build"),
    (keras.Model, "_symbolic_build"),
    (keras.metrics.FBetaScore, "_build"),
]
# Checked on the TensorFlow backend's variable class (tests/test_keras_internals.py).
PRIVATE_VARIABLE_METHODS = ["_initialize_with_initializer", "_initialize"]
PRIVATE_MODULE_NAMES = [
    ("keras.src.utils.tracking", "DotNotTrackScope"),
    ("tensorflow.python.trackable.data_structures", "sticky_attribute_assignment"),
    ("keras.src.losses.loss", "scale_loss_for_distribution"),
    ("keras.src.backend.tensorflow.trainer", "reduce_per_replica"),
    ("keras.src.backend.tensorflow.core", "Variable"),
    ("keras.src.saving.saving_lib", "save_weights_only"),
    ("keras.src.random.seed_generator", "draw_seed"),
    ("keras.src.backend.tensorflow.random", "_cast_seed"),
    ("keras.src.backend.tensorflow.random", "_get_concrete_noise_shape"),
    ("tensorflow.python.framework.ops", "_create_c_op"),
]


def keras_minor(version: str = keras.__version__) -> str:
    return ".".join(version.split(".")[:2])


# ----------------------------------------------------------------------------------------- optimizer accessors
def variable_key(optimizer, variable):
    """The key Keras itself files a variable's optimizer state under (replicas of one variable share it)."""
    return optimizer._var_key(variable)


def uses_weight_decay(optimizer, variable) -> bool:
    return optimizer._use_weight_decay(variable)


def schedule_of(optimizer):
    """The learning-rate schedule (or the float) the optimizer was built with; `learning_rate` evaluates it."""
    return optimizer._learning_rate


def add_weight_decay_exclusions(optimizer, variables) -> None:
    """Add `variables` to the optimizer's weight-decay exclusions (Keras's own method replaces the set)."""
    excluded = set(getattr(optimizer, "_exclude_from_weight_decay", None) or ())
    optimizer._exclude_from_weight_decay = excluded | {variable_key(optimizer, v) for v in variables}
    optimizer._exclude_from_weight_decay_cache = {}


def wrap_clip_gradients(optimizer, observe) -> None:
    """Call `observe(grads)` on the final (unscaled, accumulated) gradients of each update, before clipping."""
    original = optimizer._clip_gradients

    def clip_gradients(grads):
        observe(grads)
        return original(grads)

    optimizer._clip_gradients = clip_gradients


def flatten_layers(layer):
    """Every sublayer of `layer`, recursively (not `layer` itself)."""
    return layer._flatten_layers(include_self=False, recursive=True)


def replace_call(model, eligible, call) -> int:
    """Make `call` the `call` of every sublayer of `model` for which `eligible(layer)` holds, on the instance (class,
    config and saved files unchanged); returns how many. Keras's `Layer.__call__` looks `call` up on the instance,
    which is what the closed-form gradients (layer_norm.py, dropout_gradient.py) rely on."""
    count = 0
    for layer in flatten_layers(model):
        if eligible(layer):
            layer.call = types.MethodType(call, layer)
            count += 1
    return count


def dropout_seed_and_noise_shape(layer, x):
    """The int32 seed and the concrete mask shape Keras's TensorFlow dropout draws for `layer` (a Dropout) on `x`,
    advancing the layer's SeedGenerator as that call does (keras.src.backend.tensorflow.random.dropout)."""
    from keras.src.backend.tensorflow import random as tf_random
    from keras.src.random.seed_generator import draw_seed

    seed = tf_random._cast_seed(draw_seed(layer.seed_generator))
    return seed, tf_random._get_concrete_noise_shape(x, layer.noise_shape)


def producing_layer(keras_tensor):
    """The layer whose call produced a symbolic tensor of a functional model, or None."""
    history = getattr(keras_tensor, "_keras_history", None)
    return history.operation if history is not None else None


def times_called_in_graphs(layer) -> int:
    """How many calls of `layer` functional graphs hold (a layer shared across a stack has several)."""
    return len(layer._inbound_nodes)


def scale_loss_for_distribution(value):
    from keras.src.losses.loss import scale_loss_for_distribution as scale

    return scale(value)


# ----------------------------------------------------------------------------------------- overridden methods
class PerVariableWeightDecay:
    """Mixin for Keras optimizers: decoupled weight decay at each variable's own learning rate.

    Keras decays every variable at the global `learning_rate`; the host class provides
    `learning_rate_of(variable)` (tfsft.learning_rate's formula) and `lr_multiplier(variable)` (the only
    per-variable term of it), so a backbone trained at a tenth of the head's rate is also decayed at a tenth."""

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        # lr x weight_decay depends on the variable only through its dtype and LR multiplier: build it once per
        # (dtype, multiplier) rather than once per variable. Evaluating the schedule ~100 times per step was
        # ~2,500 ops in the train graph, paid in tracing and graph optimisation before the first step.
        factors: dict = {}  # (dtype, multiplier) -> (weight decay, learning rate), this step's tensors
        for variable in variables:
            if uses_weight_decay(self, variable):
                key = (variable.dtype, self.lr_multiplier(variable))
                if key not in factors:
                    lr = ops.cast(self.learning_rate_of(variable), variable.dtype)
                    factors[key] = (ops.cast(self.weight_decay, variable.dtype), lr)
                decay, lr = factors[key]
                variable.assign_sub(variable * decay * lr)


class SinglePassGlobalNormClipping:
    """Mixin for Keras optimizers: `global_clipnorm` with Keras's formula, in fewer passes over the gradients.

    Keras squares every gradient into a temporary, sums it, and multiplies by the scale; an embedding's sparse
    gradient is made dense (30,522 x 384 floats for MiniLM) for all three. Here each norm is one `L2Loss` pass
    (`global_norm`), and a sparse gradient stays sparse, its rows summed per index and scaled (the fused Adam
    update makes it dense once). The scale is Keras's: clip_norm * min(1 / norm, 1 / clip_norm), NaN when the
    norm is not finite. The norm is the dense gradient's, as PyTorch's `clip_grad_norm_` takes it; Keras squares a
    sparse gradient's rows before summing the rows of the same index, so for an embedding row used twice in a
    batch it counts g1² + g2² where this counts (g1 + g2)². tests/test_fused_adam.py compares the updates with
    Keras's own clipping of the dense gradients.
    """

    global_clipnorm: Any  # Keras's attribute, declared for the type checker

    def _clip_gradients(self, grads):
        if not (self.global_clipnorm and self.global_clipnorm > 0):
            return super()._clip_gradients(grads)  # type: ignore[misc]
        norm = global_norm(grads)  # before dense_rows below: the same ops as the gradient-norm probe's
        grads = [dense_rows(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        scale = self.global_clipnorm * tf.minimum(1.0 / norm, 1.0 / self.global_clipnorm) + (norm - norm)

        def scaled(gradient):
            if gradient is None:
                return None
            if isinstance(gradient, tf.IndexedSlices):
                values = gradient.values * tf.cast(scale, gradient.values.dtype)
                return tf.IndexedSlices(values, gradient.indices, gradient.dense_shape)
            return gradient * tf.cast(scale, gradient.dtype)

        return [scaled(g) for g in grads]


class FusedAdamUpdate:
    """Mixin for Keras Adam/AdamW: each variable's Adam update as TensorFlow's one fused `ResourceApplyAdam` op.

    Keras 3 writes the update as ~20 small ops per variable. A transformer has ~100 variables, so that is ~2,000
    ops in the training graph: on a 2-core CPU they cost seconds of Python tracing and graph optimisation
    before the first step, and an executor dispatch each at every step. The fused kernel computes the same
    formula (m, v moments; lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) bias correction; epsilon added to sqrt(v));
    the step's scalars (beta powers) are built once per step and shared by every variable. AMSGrad keeps Keras's
    own update; a sparse gradient is made dense first, as Keras's update does (see `update_step`).
    tests/test_fused_adam.py compares it with Keras's own Adam/AdamW.
    """

    _step_scalars: dict | None = None
    # Supplied by the Keras Adam/AdamW class this is mixed into (declared for the type checker only).
    iterations: Any
    beta_1: Any
    beta_2: Any
    epsilon: Any

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self._step_scalars = {}
        try:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._step_scalars = None

    def _adam_scalars(self, dtype) -> dict:
        cached = self._step_scalars.get(dtype) if self._step_scalars is not None else None
        if cached is None:
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            cached = dict(
                beta1_power=tf.pow(beta_1, step),
                beta2_power=tf.pow(beta_2, step),
                beta1=beta_1,
                beta2=beta_2,
                epsilon=tf.cast(self.epsilon, dtype),
            )
            if self._step_scalars is not None:
                self._step_scalars[dtype] = cached
        return cached

    def update_step(self, gradient, variable, learning_rate):
        if getattr(self, "amsgrad", False):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        if isinstance(gradient, tf.IndexedSlices):
            # An embedding's gradient (unclipped) arrives sparse. Keras's own Adam densifies it too (`gradient - m`
            # is a dense op) and decays every row's moments, in ~10 full-size elementwise passes over the
            # matrix: half of MiniLM's weights. Summing the rows into a dense gradient and running the fused kernel
            # is the same update in two passes (tests/test_fused_adam.py compares with Keras's on an embedding).
            gradient = tf.math.unsorted_segment_sum(gradient.values, gradient.indices, tf.shape(variable)[0])
        index = self._get_variable_index(variable)
        momentum, velocity = self._momentums[index], self._velocities[index]
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(momentum),
            v=_handle(velocity),
            lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype),
            **self._adam_scalars(dtype),
        )


def _handle(variable):
    """The resource handle of a Keras or tf variable (inside a distribution update: this replica's copy)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


# ----------------------------------------------------------------------------------------- metrics
def build_f_score(metric: Any, num_outputs: int) -> Any:
    """Create an F-score metric's variables now rather than in its first `update_state`.

    Keras's FBetaScore builds its state lazily, from the first batch's shapes. Inside the traced train step that
    is a variable created on a tf.function's first call, and TensorFlow then traces the whole step a second time
    to get a variable-free graph: with a MiniLM that second trace was ~40 % of the time to the first step."""
    if not metric._built:
        metric._build((None, num_outputs), (None, num_outputs))
    return metric


# ----------------------------------------------------------------------------------------- attribute tracking
@contextlib.contextmanager
def plain_containers_untracked() -> Iterator[None]:
    """Within the scope, a list or dict holding no trackable object is stored on a layer as it is.

    KerasHub's WordPiece tokenizer keeps its vocabulary as a list and as a token -> id dict (30,522 entries for
    BERT's). Keras's `DotNotTrackScope` skips Keras's own walk over them, but a layer on the TensorFlow backend
    then hands the assignment to TensorFlow's `AutoTrackable.__setattr__`, which wraps each container element by
    element (`ListWrapper`, `_DictWrapper`): MiniLM's tokenizer loaded in 0.56 s of CPU with that wrapping and in
    0.15 s without (median of 4, AMD EPYC, AVX2), for wrappers that record nothing: strings and ints have no
    checkpoint dependencies. Containers that do hold a trackable object (a variable, a layer, a lookup table, or
    a nested container that might) still go through TensorFlow.
    """
    from keras.src.utils.tracking import DotNotTrackScope
    from tensorflow.python.trackable import base, data_structures

    tracked = data_structures.sticky_attribute_assignment

    def holds_nothing_trackable(value) -> bool:
        items = list(value.keys()) + list(value.values()) if isinstance(value, dict) else value
        return not any(isinstance(item, (base.Trackable, list, dict, tuple, set)) for item in items)

    def assign(trackable, name, value):
        if type(value) in (list, dict) and holds_nothing_trackable(value):
            return value
        return tracked(trackable=trackable, name=name, value=value)

    data_structures.sticky_attribute_assignment = assign
    try:
        with DotNotTrackScope():
            yield
    finally:
        data_structures.sticky_attribute_assignment = tracked


@contextlib.contextmanager
def initial_values_left_to_checkpoint() -> Iterator[list]:
    """Within the scope, a floating-point Keras variable starts filled with NaN instead of its initializer's values;
    yields the list of those variables.

    A preset backbone is built with random initial values (MiniLM-L6: 22.7M truncated-normal draws) that its
    checkpoint then overwrites: the draws were 0.4 s of the 0.9 s it took to build MiniLM-L6 (median of three builds,
    AMD EPYC, AVX2). NaN rather than zeros, so that a weight the checkpoint did *not* set cannot pass for loaded:
    `still_unset` finds it, and the caller builds again the normal way. Integer variables (random seed states)
    keep their initializers. Skipping a draw consumes no random state: Keras initializers hold their own seeds,
    drawn when they are constructed, which still happens. Not thread-safe: variables other threads create
    meanwhile are affected too (tfsft builds backbones on one thread).
    """
    from keras.src.backend.tensorflow.core import Variable

    original = Variable._initialize_with_initializer
    created: list = []

    def nan_filled(variable, initializer):
        dtype = tf.as_dtype(variable._dtype)
        if not dtype.is_floating:
            return original(variable, initializer)
        created.append(variable)
        return variable._initialize(lambda: tf.fill(variable._shape, tf.constant(float("nan"), dtype)))

    Variable._initialize_with_initializer = nan_filled
    try:
        yield created
    finally:
        Variable._initialize_with_initializer = original


def still_unset(variables: list) -> list[str]:
    """Paths of the variables (from `initial_values_left_to_checkpoint`) that still hold a NaN."""
    return [v.path for v in variables if bool(tf.reduce_any(tf.math.is_nan(v.value)))]


def save_weights_without_optimizer(model, path) -> None:
    """`model.save_weights(path)` without the optimizer's state, which Keras 3 writes into a weights file too.

    Adam keeps two slots per weight, so MiniLM-L6's best.weights.h5 was 272 MB instead of 91 MB, written at each
    new best epoch of a run. The file loads with `model.load_weights` as before (Keras warns that the saved
    optimizer has no variables, and loads the layers' weights)."""
    from keras.src.saving import saving_lib

    skipped = [model.optimizer] if getattr(model, "optimizer", None) is not None else None
    saving_lib.save_weights_only(model, str(path), objects_to_skip=skipped)
