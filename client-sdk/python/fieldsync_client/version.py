"""This SDK's version, and how it names itself in its hello (the server shows it in the
members' sync health)."""

__version__ = "0.1.0"
CLIENT_VERSION = f"fieldsync-client-python/{__version__}"
