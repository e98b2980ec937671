"""``python -m constrained_grad demo ...``: the same as the ``constrained-grad`` script."""

import sys

from constrained_grad.cli import main

if __name__ == "__main__":
    sys.exit(main())
