"""Resolve a backbone spec to a Keras model with its weights, with errors that say how to work offline.

Three ways to name a backbone (exactly one per config):
- `preset`: a KerasHub preset name (downloads), a local preset or Hugging Face folder, an `hf://` /
  `kaggle://` handle, or `package:<python_pkg>/<dir>` for a folder shipped in a Python package;
- `name` with `source: keras_applications`: ResNet50/101/152 and their V2 variants;
- `architecture`: a KerasHub backbone class built from `kwargs` (random init, or `weights: file`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import socket
import threading
from pathlib import Path

import keras

from tfsft.config import BackboneConfig
from tfsft.errors import BackboneError
from tfsft.paths import resolve

log = logging.getLogger(__name__)

KERAS_APPLICATIONS = {
    "ResNet50": "resnet50",
    "ResNet101": "resnet101",
    "ResNet152": "resnet152",
    "ResNet50V2": "resnet50v2",
    "ResNet101V2": "resnet101v2",
    "ResNet152V2": "resnet152v2",
}
# The normalization each keras.applications family was trained with (see their preprocess_input).
KERAS_APPLICATIONS_NORMALIZATION = {name: ("tf" if name.endswith("V2") else "caffe") for name in KERAS_APPLICATIONS}

_NETWORK_HINTS = (
    "Name or service not known",
    "Failed to resolve",
    "URL fetch failure",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "timed out",
)


def _looks_like_network_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(hint in text for hint in _NETWORK_HINTS) or "ConnectionError" in type(exc).__name__


def is_pretrained(spec: BackboneConfig) -> bool:
    """Whether the backbone starts from learned weights (a preset, ImageNet, or a weights file)."""
    if spec.source == "keras_applications":
        return (spec.weights or "imagenet") != "none"
    return bool(spec.preset) or bool(spec.weights and spec.weights != "none")


def _is_local(location: str) -> bool:
    return location.startswith(("package:", "/", "./", "../", "~")) or os.path.exists(location)


def preset_location(spec: BackboneConfig) -> str:
    """The preset as KerasHub should receive it: a resolved folder, or the name/handle as given."""
    location = spec.preset or ""
    if _is_local(location):
        folder = resolve(location, what="model.backbone.preset folder")
        if not Path(folder).is_dir():
            raise BackboneError(
                f"model.backbone.preset = '{location}' looks like a local folder but '{folder}' does not exist. "
                f"Point it at a KerasHub preset folder or a Hugging Face model folder (config.json + weights)."
            )
        return folder
    return location


def _offline_error(spec: BackboneConfig, what: str, cause: str) -> BackboneError:
    return BackboneError(
        f"Cannot download the {what} for preset '{spec.preset}': it needs the network, and there is no network "
        f"({cause}). On a machine with network, save it with keras_hub.models.Backbone.from_preset('{spec.preset}')"
        f".save_to_preset('<folder>') (or download the Hugging Face model folder), copy the folder here and set "
        f"model.backbone.preset to that folder path."
    )


def from_preset_or_explain(loader, spec: BackboneConfig, what: str, **kwargs):
    """Call a KerasHub `from_preset` loader, turning offline/unknown-preset failures into a clear error."""
    location = preset_location(spec)
    host = None if _is_local(spec.preset or "") else remote_host(location)
    if host is not None and not reachable(host):
        # huggingface_hub would retry for ~30 s and KerasHub then blames a missing config.json: look in the
        # local download cache only, and say it is the network if the preset is not there.
        try:
            with hub_offline():
                return loader(location, **kwargs)
        except Exception:
            raise _offline_error(spec, what, f"{host} cannot be reached") from None
    try:
        return loader(location, **kwargs)
    except Exception as exc:  # KerasHub raises plain ValueError/OSError/requests errors from deep inside.
        if _looks_like_network_error(exc):
            raise BackboneError(
                f"Cannot download the {what} for preset '{spec.preset}': no network ({type(exc).__name__}). "
                f"On a machine with network, save it with keras_hub.models.Backbone.from_preset('{spec.preset}')"
                f".save_to_preset('<folder>') (or download the Hugging Face model folder), copy the folder here and "
                f"set model.backbone.preset to that folder path."
            ) from None
        if _is_local(spec.preset or ""):
            raise BackboneError(
                f"Cannot load the {what} from folder '{location}': {exc}. The folder must be a KerasHub preset "
                f"(config.json, model.weights.h5, tokenizer assets) or a Hugging Face model folder of a supported "
                f"architecture (config.json + model.safetensors)."
            ) from None
        raise BackboneError(
            f"Cannot load the {what} for preset '{spec.preset}': {exc}. Use a KerasHub preset name "
            f"(keras_hub.models.Backbone.presets lists them), an hf:// handle or a local folder."
        ) from None


def remote_host(location: str) -> str | None:
    """The host a preset downloads from: hf:// from Hugging Face, kaggle:// and plain KerasHub names from Kaggle."""
    if location.startswith("hf://"):
        return "huggingface.co"
    if location.startswith("kaggle://") or "://" not in location:
        return "api.kaggle.com"
    return None


def reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:443 opens within `timeout` s (name resolution included). Behind a proxy,
    or with HF_HUB_OFFLINE set for a Hugging Face host, the answer is left to the download library / is no."""
    if host == "huggingface.co" and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    opened: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(timeout + 0.5)
    return bool(opened)


@contextlib.contextmanager
def hub_offline():
    """huggingface_hub in offline mode (cache only, no retries) for the duration."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _require_file(path: str, key: str) -> str:
    resolved = resolve(path, what=key)
    if not Path(resolved).is_file():
        raise BackboneError(
            f"{key} = '{path}' does not exist. Give the path of a weights file "
            f"(e.g. a '.weights.h5' saved by model.save_weights or a run's backbone.weights.h5)."
        )
    return resolved


def load_backbone(
    spec: BackboneConfig, image_shape: tuple | None = None, vocabulary_size: int | None = None
) -> keras.Model:
    if spec.source == "keras_applications":
        return _keras_application(spec, image_shape)
    if spec.preset:
        backbone = _preset_backbone(spec, {"image_shape": image_shape} if image_shape else {})
    else:
        backbone = _from_architecture(spec, image_shape, vocabulary_size)
    if spec.weights and spec.weights not in ("none", "imagenet"):
        path = _require_file(spec.weights, "model.backbone.weights")
        try:
            backbone.load_weights(path)
        except Exception as exc:
            raise BackboneError(
                f"model.backbone.weights = '{spec.weights}' does not fit this backbone: {exc}. The file must come "
                f"from the same architecture with the same settings (model.backbone.kwargs)."
            ) from None
        log.info("Loaded backbone weights from %s", path)
    return backbone


def _preset_backbone(spec: BackboneConfig, kwargs: dict) -> keras.Model:
    """A preset's backbone with the preset's weights, without drawing random initial values first (see
    `keras_internals.initial_values_left_to_checkpoint`). Should the checkpoint leave a weight unset, the backbone
    is built again with its initializers, as KerasHub alone would have."""
    import keras_hub

    from tfsft import keras_internals

    with keras_internals.initial_values_left_to_checkpoint() as created:
        backbone = from_preset_or_explain(keras_hub.models.Backbone.from_preset, spec, "backbone", **kwargs)
    unset = keras_internals.still_unset(created)
    if not unset:
        return backbone
    log.info(
        "Preset '%s' left %d weight(s) unset (%s): building it again with its initializers.",
        spec.preset,
        len(unset),
        ", ".join(unset[:5]),
    )
    return from_preset_or_explain(keras_hub.models.Backbone.from_preset, spec, "backbone", **kwargs)


def _from_architecture(spec: BackboneConfig, image_shape, vocabulary_size) -> keras.Model:
    import keras_hub

    cls = getattr(keras_hub.models, spec.architecture or "", None)
    if not (isinstance(cls, type) and issubclass(cls, keras_hub.models.Backbone)):
        known = sorted(n for n in dir(keras_hub.models) if n.endswith("Backbone") and n != "Backbone")
        raise BackboneError(
            f"model.backbone.architecture = '{spec.architecture}' is not a KerasHub backbone class. "
            f"Use one of: {', '.join(known[:40])}..."
        )
    kwargs = dict(spec.kwargs)
    accepted = inspect.signature(cls).parameters  # the class's own constructor arguments
    if image_shape and "image_shape" in accepted:
        kwargs.setdefault("image_shape", image_shape)
    if vocabulary_size and "vocabulary_size" in accepted:
        kwargs.setdefault("vocabulary_size", vocabulary_size)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise BackboneError(
            f"Cannot build {spec.architecture} from model.backbone.kwargs={spec.kwargs}: {exc}. "
            f"Check the argument names and values against keras_hub.models.{spec.architecture}."
        ) from None


def _keras_application(spec: BackboneConfig, image_shape) -> keras.Model:
    if spec.name not in KERAS_APPLICATIONS:
        raise BackboneError(
            f"model.backbone.name = '{spec.name}' is not supported; use one of {sorted(KERAS_APPLICATIONS)}."
        )
    weights = spec.weights or "imagenet"
    if weights not in ("imagenet", "none"):
        weights = _require_file(weights, "model.backbone.weights")
    factory = getattr(keras.applications, spec.name)
    try:
        return factory(
            include_top=False,
            weights=None if weights == "none" else weights,
            input_shape=tuple(image_shape) if image_shape else None,
            **spec.kwargs,
        )
    except Exception as exc:
        if _looks_like_network_error(exc):
            module = KERAS_APPLICATIONS[spec.name]
            suffix = "_notop.h5"
            raise BackboneError(
                f"Cannot download ImageNet weights for {spec.name}: no network. On a machine with network run "
                f"keras.applications.{spec.name}(include_top=False, weights='imagenet') and copy "
                f"~/.keras/models/{module}_weights_tf_dim_ordering_tf_kernels{suffix} here (into ~/.keras/models/, or "
                f"anywhere and set model.backbone.weights to its path); or set model.backbone.weights: none to train "
                f"from scratch."
            ) from None
        raise BackboneError(f"Cannot build {spec.name} with weights={spec.weights!r}: {exc}") from None
