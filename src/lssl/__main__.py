"""`python -m lssl`: the command line (see `lssl.cli`)."""

from .cli import main

raise SystemExit(main())
