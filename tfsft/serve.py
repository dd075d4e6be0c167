"""`python -m tfsft.serve`: alias; the command lives in tfsft/cli/serve.py."""

import sys

from tfsft.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
