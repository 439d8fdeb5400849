"""The error family and the API page's error table (docs/api.md) say the same thing."""

from __future__ import annotations

import re

from serve_app.errors import ServiceError, Unauthorized, error_classes
from tests.support.paths import REPO

API_PAGE = REPO / "docs" / "api.md"


def documented_error_table() -> set[tuple[int, str]]:
    """(status, code) pairs of the "Limits and errors" table of docs/api.md."""
    text = API_PAGE.read_text()
    section = text[text.index("| status |", text.index("## Limits and errors")) :]
    section = section.split("\n\n")[0]  # the table ends at a blank line or the page's end
    pairs = set()
    for line in section.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        statuses = [int(s) for s in re.findall(r"\d{3}", cells[0])]
        codes = re.findall(r"`([a-z_]+)`", cells[1])
        if len(statuses) == 1:
            pairs |= {(statuses[0], code) for code in codes}
        else:  # one code per status, in order
            assert len(statuses) == len(codes), line
            pairs |= set(zip(statuses, codes, strict=True))
    return pairs


def test_api_page_table_lists_every_error_class_and_nothing_else():
    classes = {(cls.status, cls.code) for cls in error_classes()}
    assert documented_error_table() == classes


def test_codes_are_unique():
    codes = [cls.code for cls in error_classes()]
    assert len(codes) == len(set(codes))


def test_json_shape_headers_and_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(Unauthorized("key needed")))
    assert error.to_dict() == {"error": {"code": "unauthorized", "message": "key needed"}}
    assert error.headers == {"WWW-Authenticate": "Bearer"}
    assert ServiceError().status == 500
