"""`python -m wmpo.cli ...` is the `wmpo` command."""
import sys

from wmpo.cli import main

sys.exit(main())
