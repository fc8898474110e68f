"""Errors of the attribution package."""


class AttributionError(ValueError):
    """Bad attribution arguments: the message names the fix."""
