"""`python -m cfglab ...` (what torchrun runs) is the same as the `cfglab` command."""

import sys

from cfglab.cli import main

sys.exit(main())
