"""The README says what the code does: its settings tables are generated from the settings
dataclasses, and this test fails (printing the right table) when they drift apart."""

import re

import options
from archiver.settings import ArchiverSettings
from chat.settings import NodeSettings
from chat_cluster.settings import EnsureSettings
from chatlog import StreamSpec
from tests.support import ROOT

HEAD = "| flag | env | default | what |\n|---|---|---|---|\n"


def settings_block() -> str:
    node = "\n".join(options.markdown_rows(NodeSettings))
    archiver = "\n".join(options.markdown_rows(ArchiverSettings))
    stream = "\n".join(options.markdown_rows(StreamSpec))
    assert set(options.env_names(EnsureSettings)) <= (
        set(options.env_names(ArchiverSettings)) | set(options.env_names(StreamSpec))
    )
    return (
        f"`chat-cluster node`:\n\n{HEAD}{node}\n\n"
        f"`chat-cluster archiver` (and the NATS settings of every command):\n\n{HEAD}{archiver}\n\n"
        "`chat-cluster ensure-stream` (the NATS settings above, with the admin's "
        f"credentials, and):\n\n{HEAD}{stream}\n"
    )


def test_readme_settings_tables_match_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", readme, re.S)
    assert found is not None, "README.md lost its settings markers"
    expected = settings_block()
    assert found.group(1) == expected, "README.md settings tables drifted; they should be:\n" + (
        expected
    )
