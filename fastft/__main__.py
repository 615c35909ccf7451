"""``python -m fastft`` = the ``fastft`` console script."""

import sys

from fastft.cli import main

sys.exit(main())
