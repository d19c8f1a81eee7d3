"""Debian package facts (dpkg status) and the core / non-core classification shared by the guard
and the audit."""
