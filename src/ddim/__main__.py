"""`python -m ddim` (and `torchrun … -m ddim`) runs the command line."""

import sys

from ddim.cli import main

sys.exit(main())
