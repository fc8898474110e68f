"""Bridges to other training libraries: circuit snapshots taken during their runs (`integrations.trl`)."""
