"""filescan-operator: virus-scans Comm100 attachments with scan Jobs and reports the verdict."""

__version__ = "0.1.0"
