"""`python -m tfsft.evaluate`: alias; the command lives in tfsft/cli/evaluate.py."""

import sys

from tfsft.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
