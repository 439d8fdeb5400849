"""The error family and the README's error table say the same thing."""

from __future__ import annotations

import re

from serve_app.errors import ServiceError, Unauthorized, error_classes
from tests.support.paths import REPO


def readme_error_table() -> set[tuple[int, str]]:
    """(status, code) pairs of the README's "Limits and errors" table."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("| status |", text.index("### Limits and errors")) :]
    section = section[: section.index("\n\n")]
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


def test_readme_table_lists_every_error_class_and_nothing_else():
    classes = {(cls.status, cls.code) for cls in error_classes()}
    assert readme_error_table() == classes


def test_codes_are_unique():
    codes = [cls.code for cls in error_classes()]
    assert len(codes) == len(set(codes))


def test_json_shape_headers_and_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(Unauthorized("key needed")))
    assert error.to_dict() == {"error": {"code": "unauthorized", "message": "key needed"}}
    assert error.headers == {"WWW-Authenticate": "Bearer"}
    assert ServiceError().status == 500
