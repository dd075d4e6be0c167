"""`python -m tfsft.serve` and the `tfsft-serve` script: TF Serving's REST API over exported models.

The server lives in the `tfsft.serving` package; this module is its entry point and keeps the names
earlier versions exported here importable.
"""

import sys

from tfsft.serving import (InputSpec, ModelRegistry, RequestLimits, ServeConfigError, ServingError,  # noqa: F401
                           format_response, main, make_app)

if __name__ == "__main__":
    sys.exit(main())
