"""Adapters: one module per outside system, each behind a small interface in monitor.core.ports."""
