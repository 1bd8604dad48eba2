"""Attachments: type detection, blob storage, image processing and the processing worker.

See ``docs/attachments.md``. Pure decisions (``detect``, ``limits``, ``entity``) are apart
from the I/O (``blobs``, ``decode``, ``processing``, ``worker``).
"""
