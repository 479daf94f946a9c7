"""`python -m imageserver`."""

import sys

from imageserver.cli import main

sys.exit(main())
