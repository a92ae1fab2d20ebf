"""``python -m lpips_lightning.cli``: the same command line as the ``lpips-lightning`` console script."""

import sys

from .main import main

sys.exit(main())
