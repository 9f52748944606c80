"""``python -m recipe.papo.smoke``: see :mod:`recipe.papo.smoke.run`."""

import sys

from recipe.papo.smoke.run import main

sys.exit(main())
