"""Same CLI as the `lpips-lightning` console script: python train.py fit --config configs/demo.yaml."""

import sys

from lpips_lightning.cli.main import main

sys.exit(main())
