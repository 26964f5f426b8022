"""The model-free path's document structure, built from a page's lines (text, (left, top, right, bottom))."""

from __future__ import annotations

from docling_core.types.doc import (
    ContentLayer,
    ListItem,
    PictureItem,
    SectionHeaderItem,
    TableItem,
    TextItem,
    TitleItem,
)

from include.stages.layout import PageInput, Picture, build_document


def _page(items, page_no=1, pictures=()):
    return PageInput(page_no, 600.0, 842.0, list(items), list(pictures))


def _body(doc):
    return [item for item, _ in doc.iterate_items()]


def test_lines_become_a_title_paragraphs_and_headings_with_levels_from_their_numbering():
    doc = build_document("guide", [_page([  # body lines 10 pt tall
        ("Big Title", (50, 800, 250, 780)),  # 20 pt tall: the first heading of page 1 is the title
        ("first line of a para-", (50, 760, 160, 750)),
        ("graph continues here.", (50, 745, 160, 735)),
        ("A second paragraph.", (50, 700, 150, 690)),  # a wide gap above
        ("2 Installing", (50, 660, 150, 645)),
        ("2.1 From source", (50, 620, 170, 605)),
        ("Run make.", (50, 590, 100, 580)),
    ])])
    items = _body(doc)
    assert isinstance(items[0], TitleItem) and items[0].text == "Big Title"
    texts = [item.text for item in items if type(item) is TextItem]
    assert texts == ["first line of a paragraph continues here.", "A second paragraph.", "Run make."]
    headings = [(item.text, item.level) for item in items if isinstance(item, SectionHeaderItem)]
    assert headings == [("2 Installing", 1), ("2.1 From source", 2)]
    # Every item knows its page and its box.
    assert all(item.prov and item.prov[0].page_no == 1 for item in items)
    assert items[1].prov[0].bbox.t == 760 and items[1].prov[0].bbox.b == 735


def test_a_heading_wrapped_over_two_lines_is_one_heading():
    doc = build_document("d", [_page([
        ("Intro text line", (50, 820, 130, 810)),
        ("A Heading That", (50, 780, 200, 762)),
        ("Wraps Twice", (50, 758, 170, 740)),
        ("Body after it.", (50, 720, 120, 710)),
        ("More body here.", (50, 705, 130, 695)),
    ])])
    headings = [item.text for item in _body(doc) if isinstance(item, SectionHeaderItem | TitleItem)]
    assert headings == ["A Heading That Wraps Twice"]


def test_two_lines_the_text_layer_merged_into_one_tall_item_are_not_a_heading():
    doc = build_document("d", [_page([
        ("Body line one.", (50, 800, 120, 790)),
        ("Body line two.", (50, 785, 120, 775)),
        ("Two lines of small print that the text layer gave as one item, twenty points tall",
         (50, 760, 450, 740)),
    ])])
    assert not any(isinstance(item, SectionHeaderItem | TitleItem) for item in _body(doc))


def test_aligned_rows_become_a_table_with_cells_and_a_header_row():
    rows = [("Week", "Dose", "Visit"), ("1", "500 mg", "Baseline"), ("2", "1000 mg", "Clinic")]
    items = []
    for n, row in enumerate(rows):
        top = 700 - 15 * n
        items += [(text, (50 + 100 * c, top, 90 + 100 * c, top - 10)) for c, text in enumerate(row)]
    doc = build_document("d", [_page([("Doses by week:", (50, 740, 150, 730)), *items])])
    [table] = [item for item in _body(doc) if isinstance(item, TableItem)]
    assert (table.data.num_rows, table.data.num_cols) == (3, 3)
    grid = [[cell.text for cell in row] for row in table.data.grid]
    assert grid == [list(row) for row in rows]
    assert [cell.column_header for cell in table.data.grid[0]] == [True] * 3
    assert not any(cell.column_header for cell in table.data.grid[1])
    assert table.prov[0].page_no == 1


def test_two_text_columns_side_by_side_are_not_mistaken_for_a_table():
    left = "a long line of body text in the left column of the page"
    right = "and another long line of text in the right-hand column"
    doc = build_document("d", [_page([(left, (50, 700, 280, 690)), (right, (310, 700, 540, 690))])])
    assert not any(isinstance(item, TableItem) for item in _body(doc))


def test_bulleted_and_numbered_lines_become_list_items_in_their_own_lists():
    doc = build_document("d", [_page([
        ("Before you start:", (50, 800, 150, 790)),
        ("\u2022 back up your keys", (60, 785, 200, 775)),
        ("\u2022 stop the service", (60, 770, 200, 760)),
        ("1. run the installer", (60, 740, 200, 730)),
        ("2. start the service", (60, 725, 200, 715)),
    ])])
    lists = [item for item in _body(doc) if isinstance(item, ListItem)]
    assert [(item.text, item.enumerated) for item in lists] == [
        ("back up your keys", False), ("stop the service", False),
        ("run the installer", True), ("start the service", True)]
    assert lists[0].parent == lists[1].parent != lists[2].parent == lists[3].parent


def test_page_numbers_and_running_headers_are_furniture_not_body():
    pages = [_page([
        (f"Chapter 3: Utilities {n + 4}", (50, 810, 250, 800)),  # top band, repeated, numbers aside
        (f"Body text of page {n}.", (50, 700, 200, 690)),
        (str(n + 4), (290, 30, 300, 20)),  # bottom band, a page number
    ], page_no=n) for n in (1, 2)]
    doc = build_document("d", pages)
    body = [item.text for item in _body(doc)]
    assert body == ["Body text of page 1.", "Body text of page 2."]
    furniture = [item for item, _ in doc.iterate_items(included_content_layers={ContentLayer.FURNITURE})]
    assert len(furniture) == 4
    assert "Chapter 3" not in doc.export_to_markdown()


def test_a_picture_stands_where_its_top_is_with_its_description_as_caption():
    described = "[picture, description generated by gpt-4o] a bar chart"
    doc = build_document("d", [_page([
        ("First paragraph.", (50, 760, 150, 748)),
        ("After the picture.", (50, 500, 150, 488)),
    ], pictures=[Picture((50, 740, 300, 520), described)])])
    items = _body(doc)
    kinds = [type(item).__name__ for item in items]
    assert kinds.index("PictureItem") == 1 and items[0].text == "First paragraph."
    [picture] = [item for item in items if isinstance(item, PictureItem)]
    assert picture.caption_text(doc) == described and picture.prov[0].bbox.t == 740
    markdown = doc.export_to_markdown()
    assert markdown.index("First paragraph.") < markdown.index(described) < markdown.index("After the picture.")


def test_every_page_of_a_part_is_in_the_document_even_an_empty_one():
    doc = build_document("d", [_page([("Text.", (50, 700, 90, 690))], page_no=5), _page([], page_no=6)])
    assert sorted(doc.pages) == [5, 6]
