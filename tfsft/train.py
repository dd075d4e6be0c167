"""`python -m tfsft.train`: alias; the command lives in tfsft/cli/train.py."""

import sys

from tfsft.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
