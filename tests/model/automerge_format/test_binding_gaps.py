"""The binding still lacks what ``model.automerge_format`` stands in for.

Each test fails when the pinned ``automerge`` binding grows the API a workaround replaces:
the failure names the module to retire (see the table in the package's docstring).
"""

import automerge.core as binding
from automerge.core import Document


def test_no_apply_changes_so_sync_message_and_documents_stay() -> None:
    assert not hasattr(Document, "apply_changes"), (
        "the binding applies raw changes: retire automerge_format.sync_message and the "
        "sync-message path of automerge_format.documents.apply_changes"
    )


def test_no_change_decoder_so_changes_and_op_columns_stay() -> None:
    decoders = [name for name in dir(binding) if "change" in name.lower()]
    assert decoders == [], (
        f"the binding exposes {decoders}: check whether it decodes a change's header and ops, "
        "and retire automerge_format.changes / op_columns if it does (strictly)"
    )
