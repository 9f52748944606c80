"""The installed package: our `recipe` wins the namespace clash, the tests collected are ours, and the
verl pin, ``recipe/papo/REQUIRED_VERL.txt`` and the license agree."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
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


def _required_verl() -> dict[str, str]:
    """``KEY=VALUE`` lines of ``recipe/papo/REQUIRED_VERL.txt`` (verl-recipe's format; ``#`` lines are comments)."""
    lines = (REPO / "recipe" / "papo" / "REQUIRED_VERL.txt").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_required_verl_names_the_pinned_and_installed_verl():
    # pyproject.toml's verl dependency (tomllib is Python 3.11+; the project supports 3.10).
    (pinned,) = set(re.findall(r'"verl\[verl-core\]==([\w.]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8")))
    required = _required_verl()
    assert required["UPSTREAM"] == "https://github.com/verl-project/verl.git"
    assert (required["MODE"], required["TAG"]) == ("pinned_tag", f"v{pinned}")
    assert required["PIP_INSTALL"].endswith(f"=={pinned}") and "pip install verl" in required["PIP_INSTALL"]
    assert version("verl") == pinned


def test_license_file_is_the_declared_license():
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8").splitlines()
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
