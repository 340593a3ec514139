"""``python -m luo_core.platform``: the hardware process (started by the operator)."""

import sys

from luo_core.platform._server import main

sys.exit(main())
