"""Every page names only what exists: paths, modules, commands, ``make`` targets, options and config keys.

README.md, benchmarks/README.md and docs/*.md, code blocks included (``tests/support/doc_names.py`` says
what counts as a name). A planted page with one wrong name of each kind proves the check reports it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from doc_names import PATH, ROOT, missing_names, path_exists

# Names a page may mention although they do not exist here, each with its reason.
ALLOWED = frozenset(
    {
        "papo.kl_prcp_cof",  # docs/training.md quotes the error Hydra gives for this misspelled key
    }
)


def documentation_pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", documentation_pages(), ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_name_on_the_page_exists(page):
    missing = missing_names(page.read_text(encoding="utf-8"), ALLOWED)
    assert not missing, (
        f"{page.relative_to(ROOT)} names what does not exist (rename it or fix the page):\n" + "\n".join(missing)
    )


PLANTED = """
Masks are resized in `recipe/papo/resize.py` (and `recipe/papo/masking.py`, which exists) by
`recipe.papo.masking.resize_bicubic`; `recipe.papo.masking.mask_image_patches` exists.

```bash
python -m data_prep.not_a_preprocessor --out data
python -m data_prep.all --out data
make benchmark
make demo
bash scripts/run_qwen2_5_vl_7b_papo_x.sh papo.mask_ratiox=0.6 papo.mask_ratio=0.6 \\
    actor_rollout_ref.actor.not_a_key=1 actor_rollout_ref.actor.optim.lr=1e-6 \\
    ++ray_kwargs.ray_init.runtime_env.env_vars.ANY_NAME=1 +trainer.val_only.deeper=1
```
"""


def test_a_planted_wrong_name_of_each_kind_is_reported():
    assert missing_names(PLANTED) == [
        "path recipe/papo/resize.py",
        "path scripts/run_qwen2_5_vl_7b_papo_x.sh",
        "module recipe.papo.masking.resize_bicubic",
        "module data_prep.not_a_preprocessor",
        "python -m data_prep.not_a_preprocessor",
        "make target benchmark",
        "option papo.mask_ratiox",
        "config key actor_rollout_ref.actor.not_a_key",
        "config key +trainer.val_only.deeper",  # a value, not a mapping: Hydra cannot add under it
    ]


def test_an_allowed_name_is_not_reported():
    assert missing_names("`papo.kl_prcp_cof`", frozenset({"papo.kl_prcp_cof"})) == []


def test_every_docs_page_the_code_names_exists():
    """Docstrings, comments and messages point readers at docs pages: each page they name exists."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    missing = [
        f"{name}: {page}"
        for name in tracked
        if name.endswith((".py", ".sh", ".yaml", ".toml", ".cfg")) or name == "Makefile"
        for page in PATH.findall((ROOT / name).read_text(encoding="utf-8"))
        if page.startswith("docs/") and not path_exists(page)
    ]
    assert not missing, "code names docs pages that do not exist:\n" + "\n".join(missing)
