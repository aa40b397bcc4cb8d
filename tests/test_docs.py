"""The README says what the code does: its settings tables are generated from the settings
dataclasses, and this test fails (printing the right table) when they drift apart."""

import re

import options
from archiver.settings import ArchiverSettings
from chat.settings import NodeSettings
from tests.support import ROOT


def settings_block() -> str:
    node = "\n".join(options.markdown_rows(NodeSettings))
    archiver = "\n".join(options.markdown_rows(ArchiverSettings))
    return (
        "`chat-cluster node`:\n\n| flag | env | default | what |\n|---|---|---|---|\n"
        f"{node}\n\n`chat-cluster archiver` (and `chat-cluster ensure-stream`, which takes "
        "the NATS and stream settings):\n\n| flag | env | default | what |\n|---|---|---|---|\n"
        f"{archiver}\n"
    )


def test_readme_settings_tables_match_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", readme, re.S)
    assert found is not None, "README.md lost its settings markers"
    expected = settings_block()
    assert found.group(1) == expected, "README.md settings tables drifted; they should be:\n" + (
        expected
    )
