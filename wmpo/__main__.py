"""`python -m wmpo ...` is the `wmpo` command."""
from wmpo.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
