"""User-facing errors.

Anything a user can cause (a bad config value, a missing file, an unreadable record, no network for a
download) is raised as a `TfsftError`. Entry points print its message as one paragraph and exit with
its code; they never show a traceback for it.
"""


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
