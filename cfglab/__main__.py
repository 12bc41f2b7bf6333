"""`python -m cfglab ...` (what torchrun runs) is the same as the `cfglab` command."""

import sys

try:
    from cfglab.cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules import: the same exit as in a command
    print("cfglab: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
