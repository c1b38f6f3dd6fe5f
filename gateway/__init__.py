"""flam-gateway: a secure file-drop exchange gateway for the FlaM execution bodies."""

__version__ = "0.1.0"
