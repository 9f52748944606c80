"""The user documentation stays true to the code: README.md and docs/*.md.

- ``docs/options.md`` holds one table row per ``PapoConfig`` field, generated from the field's
  default and its entry in the dataclass docstring (``recipe/papo/config.py``), so every option is
  documented once, in the code; ``configs/papo_trainer.yaml`` has the same keys and defaults, each
  with its comment.
- Every skip reason of ``data_prep.problems.SKIP_REASONS`` has its row in ``docs/data.md``.
- Every relative link (and ``#anchor``) in README.md and docs/*.md resolves; README.md links every
  docs page and stays a front page (at most 400 lines).
- No page refers to a "spec": users do not have one (cite arXiv 2507.06448 or state the fact).

``python tests/docs/test_docs.py`` prints the options table as the test expects it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import yaml
from doc_blocks import bash_block_after

from recipe.papo.config import PapoConfig

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
OPTIONS_MD = DOCS / "options.md"
CONFIG_PY = "recipe/papo/config.py"
TRAINER_YAML = ROOT / "configs" / "papo_trainer.yaml"
README_MAX_LINES = 400
TABLE_HEADER = "| option | default | description |"


# --- the options table, generated from PapoConfig --------------------------------------------------


def option_fields() -> list[dataclasses.Field]:
    """PapoConfig's user options, in declaration order (verl's private ``_target_`` excluded)."""
    return [f for f in dataclasses.fields(PapoConfig) if not f.name.startswith("_")]


def docstring_attributes(cls: type) -> dict[str, str]:
    """``{name: text}`` from the ``Attributes:`` section of a Google-style class docstring.

    An entry is ``name: text`` at the section's indentation; deeper-indented lines continue it.
    Whitespace is collapsed to single spaces.
    """
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return {}
    entries: dict[str, list[str]] = {}
    indent = None
    current = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        if depth < indent:
            break
        match = re.match(r"(\w+):\s*(.*)", line.strip())
        if depth == indent and match:
            current = match.group(1)
            entries[current] = [match.group(2)]
        elif current is not None:
            entries[current].append(line.strip())
    return {name: " ".join(" ".join(parts).split()) for name, parts in entries.items()}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _plain(value: Any) -> Any:
    """A default as YAML would hold it (nested configs as mappings without private keys)."""
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items() if not k.startswith("_")}
    return value


def render_default(value: Any) -> str:
    """A default in YAML spelling: ``null``, ``true``, ``0.02``, ``low_var_kl``, ``{"a": 1}``."""
    value = _plain(value)
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float | str):
        return str(value)
    return json.dumps(value)


def render_description(text: str) -> str:
    """Docstring text as a Markdown table cell (reST ````code```` becomes `code`)."""
    return text.replace("``", "`").replace("|", "\\|")


def expected_rows() -> dict[str, str]:
    """``{option: table row}`` as docs/options.md must hold it."""
    docs = docstring_attributes(PapoConfig)
    return {
        f.name: f"| `{f.name}` | `{render_default(_default(f))}` | {render_description(docs.get(f.name, ''))} |"
        for f in option_fields()
    }


def options_table() -> str:
    """The whole table, header included, in PapoConfig's field order."""
    return "\n".join([TABLE_HEADER, "|---|---|---|", *expected_rows().values()])


def documented_rows(text: str) -> dict[str, str]:
    """``{option: row}`` of the table under ``TABLE_HEADER`` in docs/options.md."""
    lines = text.splitlines()
    assert TABLE_HEADER in lines, f"docs/options.md: no table with the header line {TABLE_HEADER!r}"
    rows: dict[str, str] = {}
    for line in lines[lines.index(TABLE_HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        match = re.match(r"\| `(\w+)` \|", line)
        assert match, f"docs/options.md: table row without an option name in backticks: {line!r}"
        rows[match.group(1)] = line
    return rows


def test_every_option_has_a_docstring_entry():
    documented = docstring_attributes(PapoConfig)
    missing = [f.name for f in option_fields() if not documented.get(f.name)]
    assert not missing, (
        f"PapoConfig fields without an entry in its docstring's Attributes: section ({CONFIG_PY}): "
        f"{', '.join(missing)}. Add `<name>: <what it does, allowed values>` there; it is the option's documentation."
    )
    stale = sorted(set(documented) - {f.name for f in option_fields()})
    assert not stale, f"{CONFIG_PY}: the PapoConfig docstring documents fields that do not exist: {', '.join(stale)}"


def test_options_table_matches_papo_config():
    """Every field has exactly its generated row: name, default and docstring text."""
    documented = documented_rows(OPTIONS_MD.read_text(encoding="utf-8"))
    expected = expected_rows()
    problems = []
    for name, row in expected.items():
        if documented.get(name) != row:
            verb = "is missing" if name not in documented else "is out of date"
            problems.append(f"row for `{name}` {verb}; it must read:\n{row}")
    problems += [
        f"row for `{name}` names no PapoConfig field: delete it" for name in documented if name not in expected
    ]
    if list(documented) != list(expected) and not problems:
        problems.append("rows are not in PapoConfig's field order")
    assert not problems, (
        "docs/options.md disagrees with PapoConfig (recipe/papo/config.py), the source of truth. "
        "Edit the docstring there, then paste the rows below (or the whole table printed by "
        "`python tests/docs/test_docs.py`) into docs/options.md:\n" + "\n".join(problems)
    )


def papo_yaml_block() -> tuple[dict[str, Any], dict[str, bool]]:
    """The ``papo:`` block of configs/papo_trainer.yaml and, per key, whether a comment precedes it."""
    text = TRAINER_YAML.read_text(encoding="utf-8")
    block = yaml.safe_load(text)["papo"]
    commented: dict[str, bool] = {}
    lines = text.splitlines()
    start = lines.index("papo:")
    previous = ""
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        match = re.match(r"  (\w+):", line)
        if match:
            commented[match.group(1)] = previous.lstrip().startswith("#")
        if line.strip():
            previous = line
    return block, commented


def test_trainer_yaml_has_every_option_with_its_default_and_comment():
    block, commented = papo_yaml_block()
    fields = {f.name: _plain(_default(f)) for f in option_fields()}
    keys = {k for k in block if not k.startswith("_")}
    assert keys == set(fields), (
        f"{TRAINER_YAML.relative_to(ROOT)} papo: block and PapoConfig differ: missing in the YAML "
        f"{sorted(set(fields) - keys)}, unknown to PapoConfig {sorted(keys - set(fields))}. "
        "Add each option to the YAML with a one-line comment and the dataclass default."
    )
    wrong = {k: (block[k], fields[k]) for k in fields if block[k] != fields[k]}
    assert not wrong, f"papo: defaults in the YAML differ from PapoConfig's (yaml, dataclass): {wrong}"
    uncommented = [k for k in fields if not commented.get(k)]
    assert not uncommented, f"papo: options without a comment line above them in the YAML: {uncommented}"


def test_docstring_parser_reads_continuation_lines():
    """The parser itself, on a docstring written for this test."""

    class Sample:
        """Summary.

        Attributes:
            alpha: first line
                continues here.
            beta: ``code`` | pipe.

        Returns nothing.
        """

    assert docstring_attributes(Sample) == {"alpha": "first line continues here.", "beta": "``code`` | pipe."}
    assert render_description("``code`` | pipe.") == "`code` \\| pipe."
    assert [render_default(v) for v in (None, True, 0.02, "low_var_kl", 14)] == [
        "null",
        "true",
        "0.02",
        "low_var_kl",
        "14",
    ]


# --- links, length, wording ------------------------------------------------------------------------


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _without_fences(text: str) -> str:
    """The text with fenced code blocks removed (a ``# comment`` in a shell block is no heading)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def _prose(text: str) -> str:
    """The text with fenced code blocks and inline code spans blanked (links in code are not links)."""
    return re.sub(r"`[^`\n]*`", "``", _without_fences(text))


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    text = _without_fences(path.read_text(encoding="utf-8"))
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def test_every_relative_link_resolves():
    broken = []
    for page in pages():
        for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            path_part, _, anchor = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(ROOT)}: link ({target})"
            if not resolved.exists():
                broken.append(f"{where}: {path_part} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
                broken.append(f"{where}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_docs_page():
    linked = {
        (README.parent / t.partition("#")[0]).resolve()
        for t in LINK.findall(_prose(README.read_text(encoding="utf-8")))
    }
    unlinked = [p.relative_to(ROOT).as_posix() for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md links no page {unlinked}: add each to its 'Documentation' list"


def test_readme_is_a_front_page():
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, (
        f"README.md has {count} lines (at most {README_MAX_LINES}): move reference material into docs/"
    )


def test_every_skip_reason_is_documented():
    from data_prep.problems import SKIP_REASONS

    text = (DOCS / "data.md").read_text(encoding="utf-8")
    missing = [reason for reason in SKIP_REASONS if f"| `{reason}` |" not in text]
    assert not missing, (
        f"docs/data.md has no row for the skip reason(s) {missing} of data_prep.problems.SKIP_REASONS: "
        "add `| `<reason>` | <what the row has wrong> |` to its skip-reason table"
    )


def test_no_page_refers_to_a_spec():
    hits = [
        f"{page.relative_to(ROOT)}:{number}: {line.strip()}"
        for page in pages()
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bspec(s|'s)?\b", line, flags=re.IGNORECASE)
    ]
    assert not hits, (
        "users have no 'spec': cite the paper (arXiv 2507.06448, its section or table) or state the fact:\n"
        + "\n".join(hits)
    )


if __name__ == "__main__":
    print(options_table())


def commands(block: str) -> list[str]:
    """Each command of a bash block (continuation lines joined) without its leading ``NAME=value`` settings,
    cut to what it runs: the program and its module, script or subcommand."""
    heads = []
    for command in block.replace("\\\n", " ").splitlines():
        words = command.split()
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        if words:
            heads.append(" ".join(words[:3] if words[:2] == ["python", "-m"] else words[:2]))
    return heads


def test_the_cpu_journey_runs_the_readme_journey_commands():
    """docs/data.md's CPU journey (run as written by tests/e2e/test_journey.py) is the README's
    "From data to table" sequence, command for command, after the one that writes the hub copies."""
    readme = commands(bash_block_after(README, "## From data to table"))
    cpu = commands(bash_block_after(DOCS / "data.md", "### The whole journey on CPU"))
    assert readme == [
        "export DATA_DIR=$PWD/data",
        "python -m data_prep.all",
        "bash scripts/run_qwen2_5_vl_7b_papo_g.sh",
        "python -m verl.model_merger",
        "bash scripts/eval_papo.sh",
        "cat eval_results/qwen2_5_vl_7b_papo_g__global_step_202/eval_table.md",
    ]
    assert cpu[0] == "python -m papo_tools.journey"

    def step(head: str) -> str:  # what a command does, whatever folder it names
        program, _, argument = head.partition(" ")
        return {"export": argument.split("=")[0], "cat": Path(argument).name}.get(program, argument)

    assert [step(head) for head in cpu[1:]] == [step(head) for head in readme]


# --- the layout and patch tables of docs/develop.md cover the code ---------------------------------


def first_column_names(page: Path, heading: str) -> set[str]:
    """The backticked names in the first column of the first table after ``heading`` in ``page``."""
    _, found, rest = page.read_text(encoding="utf-8").partition(heading + "\n")
    assert found, f"{page.name} has no heading {heading!r}"
    rows = re.search(r"\n(\|.*?)(?:\n\n|\Z)", rest, re.DOTALL)
    assert rows, f"{page.name}: no table after {heading!r}"
    return {name for row in rows.group(1).splitlines() for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def test_the_layout_table_names_every_module_of_the_runtime_package_and_every_tool():
    names = first_column_names(DOCS / "develop.md", "### Repository layout")
    modules = [
        f"recipe/papo/{p.name}" for p in sorted((ROOT / "recipe" / "papo").glob("*.py")) if p.name != "__init__.py"
    ]
    tools = [
        f"papo_tools/{p.name}" + ("/" if p.is_dir() else "")
        for p in sorted((ROOT / "papo_tools").iterdir())
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.name != "__init__.py")
    ]
    unnamed = [path for path in modules + tools if path not in names and path.rsplit("/", 1)[-1] not in names]
    assert not unnamed, f"docs/develop.md's layout table does not name: {unnamed}"


def test_the_patch_table_names_every_patch_module():
    names = first_column_names(
        DOCS / "develop.md", "## Patches of other packages (`recipe/papo/compat/`, `papo_tools/compat/`)"
    )
    patched = {name.split(":", 1)[0] for name in names}
    modules = [
        p.stem
        for folder in (ROOT / "recipe" / "papo" / "compat", ROOT / "papo_tools" / "compat")
        for p in sorted(folder.glob("*.py"))
        if p.stem not in ("__init__", "guard")
    ]
    assert not [m for m in modules if m not in patched], f"docs/develop.md's patch table lacks {set(modules) - patched}"
