"""Build hook: a wheel carries the shared wire format and entity schemas; an editable install
does not copy them.

``sync/`` and ``model/`` have one definition, in the repository root. A built wheel needs its
own copy next to ``fieldsync_client``. An editable install must not have one: a copy in
site-packages would shadow the repository's files for every process started from the venv,
and go stale at the first edit. There the root project's editable install provides them.
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SHARED = {"../sync": "sync", "../model": "model"}


class SharedPackagesHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "editable":
            build_data["force_include"].update(SHARED)
