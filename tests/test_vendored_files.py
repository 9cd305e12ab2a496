"""The vendored Hugging Face files are the published ones, byte for byte.

Other tests compare dyllm against these files, so an edited or line-ending-converted copy would
make them test the wrong thing. `fixtures/hf/README.md` records each file's size and SHA-256.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from tests.checkpoints import HF

ROW = re.compile(r"^\| (?P<path>[\w.-]+/[\w.-]+) \| (?P<size>\d+) \| (?P<sha>[0-9a-f]{64}) \|$")
RECORDED = [
    match.groupdict()
    for line in (HF / "README.md").read_text("utf-8").splitlines()
    if (match := ROW.match(line))
]


def test_every_vendored_file_is_recorded() -> None:
    files = {path.relative_to(HF).as_posix() for path in HF.rglob("*") if path.is_file()}
    on_disk = files - {"README.md"}
    assert {row["path"] for row in RECORDED} == on_disk
    assert len(on_disk) == 15


@pytest.mark.parametrize("row", RECORDED, ids=lambda row: row["path"])
def test_vendored_file_matches_its_recorded_size_and_hash(row: dict[str, str]) -> None:
    data = (HF / row["path"]).read_bytes()
    assert len(data) == int(row["size"])
    assert hashlib.sha256(data).hexdigest() == row["sha"]


def test_tests_read_nothing_outside_the_repository() -> None:
    repository = Path(__file__).resolve().parents[1]
    assert HF.resolve().is_relative_to(repository)
