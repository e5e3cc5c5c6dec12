"""The dashboard: a read-only web page served by the daemon's HTTP app (GET /, GET /jobs/{N}), kept
live through Server-Sent Events (GET /api/v1/stream). Actions go through the API itself, with its token."""
