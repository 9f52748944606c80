"""convert_row: one record per good row, one named skip per bad-input class."""

from __future__ import annotations

import data_prep_fixtures as fx
import pytest
from PIL import Image

from data_prep.images import MissingImage
from data_prep.problems import SKIP_REASONS, RowProblem
from data_prep.rows import RawRow, RowSpec, Skip, convert_row
from data_prep.sharegpt import parse_messages, unbox
from recipe.papo.prompt import FORMAT_INSTRUCTION

SPEC = RowSpec(data_source="papo/virl39k", split="train", benchmark="virl39k", group=None, ability="math")


def raw(question="<image>Find x.", answer="3", images=None, index=4, row_id="q4"):
    return RawRow(index=index, id=row_id, question=question, answer=answer, images=images)


def test_good_row_builds_the_verl_record():
    data = fx.png_bytes(20, 12)
    record = convert_row(
        raw(question="  <image>Find x.  ", answer=" 3 ", images=[{"bytes": data, "path": "/abs/dir/a.png"}]), SPEC
    )
    assert record == {
        "data_source": "papo/virl39k",
        "prompt": [{"role": "user", "content": f"<image>Find x.\n\n{FORMAT_INSTRUCTION}"}],
        "images": [{"bytes": data, "path": "a.png"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "3"},
        "extra_info": {"split": "train", "index": 4, "id": "q4", "benchmark": "virl39k", "group": None},
    }


def test_image_entry_forms(tmp_path):
    """bytes, {bytes, path}, a file path and a PIL image are all accepted; bytes are kept as they are."""
    data = fx.png_bytes(9, 7)
    (tmp_path / "f.png").write_bytes(data)
    pil = Image.new("L", (5, 6), 77)
    record = convert_row(
        raw(question="<image>" * 4, images=[data, {"bytes": data, "path": "rel/x.png"}, str(tmp_path / "f.png"), pil]),
        SPEC,
    )
    images = record["images"]
    assert [entry["bytes"] for entry in images[:3]] == [data, data, data]
    assert [entry["path"] for entry in images] == [None, "rel/x.png", "f.png", None]
    assert fx.decode(images[3]).size == (5, 6) and fx.decode(images[3]).getpixel((0, 0)) == 77


def test_numeric_answer_and_id_become_strings():
    record = convert_row(raw(answer=12, images=[fx.image()], row_id="7"), SPEC)
    assert record["reward_model"]["ground_truth"] == "12"
    assert record["extra_info"]["id"] == "7"


def test_row_without_images_and_placeholders_is_kept():
    record = convert_row(raw(question="What is 2+2?", answer="4", images=None), SPEC)
    assert record["images"] == []


@pytest.mark.parametrize(
    ("row", "reason", "detail"),
    [
        (raw(images=[{"bytes": b"\x89PNG\r\n\x1a\nnot really", "path": None}]), "corrupt_image", "image 0"),
        (
            raw(images=[MissingImage("imgs/a.png", ("/data/imgs/a.png",))]),
            "missing_image_file",
            "'imgs/a.png' not found (looked for /data/imgs/a.png)",
        ),
        (raw(images=[{"bytes": None, "path": "/no/such/file.png"}]), "missing_image_file", "/no/such/file.png"),
        (
            raw(question="Find x.", images=[b"x"]),
            "image_count_mismatch",
            "question has 0 <image> placeholder(s) but the row has 1 image(s)",
        ),
        (raw(question="<image><image>Find x.", images=[b"x"]), "image_count_mismatch", "has 2 <image>"),
        (raw(answer=""), "missing_answer", "answer is ''"),
        (raw(answer=None), "missing_answer", "answer is None"),
        (raw(answer=["3"]), "invalid_answer", "answer has type list"),
        (raw(question=None), "missing_question", "question is None"),
        (raw(question=" \n"), "missing_question", "question is"),
        (raw(images=[{"path": None}]), "invalid_image_entry", "neither bytes nor path"),
        (raw(images=[3]), "invalid_image_entry", "unsupported type int"),
        (raw(images="a.png"), "invalid_image_entry", "images is a str, not a list"),
    ],
)
def test_bad_rows_are_skipped_with_a_reason(row, reason, detail):
    result = convert_row(row, SPEC)
    assert isinstance(result, Skip)
    assert (result.index, result.id, result.reason) == (4, "q4", reason)
    assert detail in result.detail
    assert reason in SKIP_REASONS


def test_first_failing_check_names_the_reason():
    """A row with no answer and a corrupt image is reported once, for the answer (checked first)."""
    result = convert_row(raw(answer=None, images=[b"corrupt"]), SPEC)
    assert result.reason == "missing_answer"


def test_unknown_reason_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown skip reason"):
        RowProblem("bad_vibes", "x")


def test_parse_messages():
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "<image>Q"},
        {"role": "assistant", "content": "\\boxed{42}"},
    ]
    assert parse_messages(messages) == ("<image>Q", "42")
    assert parse_messages(messages[:2]) == ("<image>Q", None)
    for bad in ("text", [{"content": "no role"}], messages[:1] + messages[2:], messages[1:2] * 2):
        with pytest.raises(RowProblem) as caught:
            parse_messages(bad)
        assert caught.value.reason == "malformed_messages"


def test_unbox_only_whole_boxed_answers():
    assert unbox(" \\boxed{\\frac{1}{2}} ") == "\\frac{1}{2}"
    assert unbox("x = \\boxed{2}") == "x = \\boxed{2}"
    assert unbox(5) == 5
