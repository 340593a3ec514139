"""``python -m luo_core`` is the ``luo`` command."""

import sys

from luo_core.cli import main

sys.exit(main())
