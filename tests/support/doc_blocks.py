"""The command blocks of a documentation page, for tests that run or compare what a page writes.

Test support: importable as ``doc_blocks`` once ``tests/support`` is on ``sys.path``.
"""

from __future__ import annotations

import re
from pathlib import Path


def bash_block_after(page: Path, heading: str) -> str:
    """The first ``bash`` block after the line ``heading`` of ``page`` (its text, without the fences)."""
    _, found, rest = page.read_text().partition(heading + "\n")
    assert found, f"{page.name} has no heading {heading!r}"
    match = re.search(r"```bash\n(.*?)```", rest, re.DOTALL)
    assert match, f"{page.name}: no bash block after {heading!r}"
    return match.group(1)
