"""`python -m loyalty_segmenter [serve|migrate]`."""

import sys

from loyalty_shared.service import main

from .bootstrap import definition

sys.exit(main(definition))
