"""Hostile input (issue 7): schema fuzzing, an SSRF corpus, hostile files and secrets in output."""
