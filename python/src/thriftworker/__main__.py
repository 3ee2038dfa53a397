"""`python -m thriftworker`: the same as `thriftworker-py`."""

import sys

from .cli import main

sys.exit(main())
