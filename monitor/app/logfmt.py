"""Log output: text with timestamps on a terminal or in a file, text without them under journald (which
stamps each line itself), or one JSON object per line (`--log-format json`, `log_format: json`)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_TEXT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def under_journald(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal's stream (systemd sets JOURNAL_STREAM=DEVICE:INODE of it)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def formatter(fmt: str, stream: IO[str], environ: Mapping[str, str] | None = None) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter(JOURNAL_TEXT if under_journald(stream, environ) else TEXT)


def setup_logging(level: str, fmt: str = "text", stream: IO[str] | None = None) -> None:
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(fmt, out))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
