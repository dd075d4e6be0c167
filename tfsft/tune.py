"""`python -m tfsft.tune`: alias; the command lives in tfsft/cli/tune.py."""

import sys

from tfsft.cli.tune import main

if __name__ == "__main__":
    sys.exit(main())
