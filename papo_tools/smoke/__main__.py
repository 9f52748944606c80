"""``python -m papo_tools.smoke``: see :mod:`papo_tools.smoke.run`."""

import sys

from papo_tools.smoke.run import main

sys.exit(main())
