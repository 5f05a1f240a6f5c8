"""`python -m covidxr.cli`: the `covidxr` command."""

import sys

from covidxr.cli import main

sys.exit(main())
