"""`analysis.tables.markdown_table` against hand-written Markdown."""

import pytest

from prompt_tuning.analysis.tables import markdown_table


def test_header_rule_rows_and_escaped_pipes():
    text = markdown_table(["prompt", "accuracy"], [["a|b", 81.5], ["run", 7]])
    assert text == (
        "| prompt | accuracy |\n"
        "|---|---|\n"
        "| a\\|b | 81.5 |\n"  # a literal | would start a new column
        "| run | 7 |\n"
    )


def test_a_table_without_rows_is_its_header():
    assert markdown_table(["x"], []) == "| x |\n|---|\n"


def test_a_row_of_another_width_is_refused():
    with pytest.raises(ValueError, match=r"3 cells but the header \['a', 'b'\] has 2"):
        markdown_table(["a", "b"], [[1, 2, 3]])
