"""Unit tests: one part at a time, in process, on the fake clock; no peer processes."""
