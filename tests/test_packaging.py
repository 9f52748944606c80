"""The installed package: our `recipe` wins the namespace clash, the tests collected are ours."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_recipe_package_is_ours_from_outside_the_repo(tmp_path):
    """TransferQueue installs a stray site-packages/recipe folder; the editable install must win."""
    code = "import recipe, recipe.papo, data_prep; print(recipe.__file__); print(data_prep.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    recipe_file, data_prep_file = out.stdout.split()
    assert Path(recipe_file) == REPO / "recipe" / "__init__.py"
    assert Path(data_prep_file) == REPO / "data_prep" / "__init__.py"


def test_this_module_is_collected_from_the_project_tests_folder():
    assert Path(__file__).resolve().parent == REPO / "tests"
