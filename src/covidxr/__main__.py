"""`python -m covidxr`: the `covidxr` command."""

import sys

from covidxr.cli import main

sys.exit(main())
