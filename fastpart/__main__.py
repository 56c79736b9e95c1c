"""``python -m fastpart ...`` (and ``torchrun -m fastpart ...``): the ``fastpart`` command."""

import sys

from fastpart.cli import main

sys.exit(main())
