"""`python -m kpod ...` is the `kpod` command; under a launcher: `accelerate launch [--config_file ...] -m kpod run cfg`."""

import sys

from kpod.cli import main

sys.exit(main())
