"""``python -m luo_core.kexec``: a kernel image process (started by the operator)."""

import sys

from luo_core.kexec._image import main

sys.exit(main())
