"""verl's own functions as the installed wheel defines them, whatever this process has patched.

Test support: importable as ``verl_functions`` once ``tests/support`` is on ``sys.path``
(``tests/conftest.py`` puts it there).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable


def verl_maybe_fix_3d_position_ids() -> Callable:
    """verl's ``verl.utils.tensordict_utils.maybe_fix_3d_position_ids``, unpatched.

    ``recipe.papo.compat.verl.install_position_ids_fix`` replaces it in the imported module; this
    executes the wheel's module file again as a private module object (``sys.modules`` untouched)
    and returns its function, the one the patch replaces.
    """
    spec = importlib.util.find_spec("verl.utils.tensordict_utils")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.maybe_fix_3d_position_ids
