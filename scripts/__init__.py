"""Maintenance scripts: generated files (bundle, requirements, README reference) and tool builds."""
