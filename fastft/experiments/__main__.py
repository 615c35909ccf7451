import sys

from fastft.experiments.cli import main

sys.exit(main())
