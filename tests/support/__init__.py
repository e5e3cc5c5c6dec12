"""Helpers the tests share: the in-process harness, packets, sockets, waiting."""
