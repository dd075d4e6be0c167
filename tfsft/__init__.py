"""tfsft: supervised fine-tuning of pretrained Keras/KerasHub backbones from one YAML config.

Importing the package makes the CPU runtime choices that TensorFlow reads only when it is first imported
(see `tfsft.runtime`); it does not import TensorFlow itself.
"""

from tfsft import runtime as _runtime

_runtime.configure()
