"""`python -m dreambooth ...` and `accelerate launch -m dreambooth ...`."""

import sys

from .cli import main

sys.exit(main())
