"""The clothing-rental example service."""
