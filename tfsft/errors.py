"""User-facing errors.

Anything a user can cause (a bad config value, a missing file, an unreadable record, no network for a
download) is raised as a `TfsftError`. Entry points print its message as one paragraph and exit with
its code; they never show a traceback for it.
"""

import re


class TfsftError(Exception):
    """A mistake the user can fix. The message names the culprit and the fix."""

    exit_code = 2


class ConfigError(TfsftError):
    """The configuration is invalid."""


class DataError(TfsftError):
    """The data cannot be read or does not fit the configuration."""


class BackboneError(TfsftError):
    """The pretrained backbone cannot be resolved or loaded."""


class TrainingAborted(TfsftError):
    """Training stopped on a condition the user must look at (e.g. a NaN loss)."""

    exit_code = 3


def clean_tf_message(message: str) -> str:
    """The reason in a TensorFlow error, without its plumbing: "{{function_node __wrapped__DecodeImage...}}
    Unknown image file format. ... [Op:DecodeImage] name: " and "Graph execution error: Detected at node ...
    (a stack) ... Unknown image file format ... [[{{node DecodeImage}}]]" both give "Unknown image file format. ..."."""
    for raw in str(message).splitlines():
        line = raw.strip()
        if (
            not line
            or raw[:1].isspace()
            or line.startswith(("Graph execution error", "Detected at node", "File "))
            or line.startswith("[[")
        ):
            continue
        line = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", line)
        line = re.sub(r"\s*\[\[\{\{node [^]]*\]\].*$|\s*\[Op:[^]]*\].*$", "", line).strip()
        if line:
            return line[:200]
    return "cannot be decoded"
