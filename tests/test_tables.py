"""The one Markdown / CSV table writer (rabo.tables)."""

from rabo.tables import cell, markdown, write_csv, write_markdown


def test_markdown_lines_are_header_rule_and_one_line_per_row():
    assert markdown(["a", "b"], [["1", "2"], ["x", ""]]) == [
        "| a | b |", "|---|---|", "| 1 | 2 |", "| x |  |"]


def test_cells_show_four_significant_figures_and_a_dash_for_missing():
    assert [cell(0.123456), cell(12345.0), cell(3), cell("rabo"), cell(None)] == [
        "0.1235", "1.234e+04", "3", "rabo", "—"]


def test_files_keep_the_columns_full_precision_in_csv_and_a_header_in_markdown(tmp_path):
    rows = [{"m": "rabo", "acc": 0.123456789, "extra": 1}, {"m": "oap", "acc": None}]
    write_csv(rows, ["m", "acc"], tmp_path / "t.csv")
    write_markdown(rows, ["m", "acc"], tmp_path / "t.md", header=["method", "accuracy"])
    assert (tmp_path / "t.csv").read_bytes() == b"m,acc\r\nrabo,0.123456789\r\noap,\r\n"
    assert (tmp_path / "t.md").read_text() == (
        "| method | accuracy |\n|---|---|\n| rabo | 0.1235 |\n| oap | — |\n")
