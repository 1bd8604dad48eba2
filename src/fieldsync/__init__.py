"""fieldsync: an offline-first sync server for field project plans, and the code it shares
with its clients.

The repository is organised by top-level folders (``sync/``, ``model/``, ``conflict/``,
``store/``, ``live/``, ...); this package is their one import root: ``src/fieldsync/`` holds
only links to them, so every module is ``fieldsync.<folder>.<module>`` wherever it runs,
and nothing generic lands at the top of site-packages. See docs/architecture.md.

``pip install fieldsync`` brings the pure parts (``fieldsync.sync``, ``fieldsync.model``,
``fieldsync.conflict``) with their few dependencies; the server needs
``pip install 'fieldsync[server]'``.
"""

__version__ = "0.1.0"
