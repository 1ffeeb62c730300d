"""One line per event: JSON (`--log-format json`) or `key=value` text.

Callers attach structured fields with `extra={"fields": {...}}`; `device` and `reason` are the
ones operators filter by.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.parse


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + ".%03dZ" % record.msecs,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info).replace("\n", " | ")
        return json.dumps(line, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + ".%03d" % record.msecs
        fields = getattr(record, "fields", {})
        pairs = " ".join("%s=%s" % (k, _quote(v)) for k, v in fields.items() if k != "event")
        line = "%s %-5s %s%s" % (stamp, record.levelname, record.getMessage(), " " + pairs if pairs else "")
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=') else text


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("paho").setLevel(logging.WARNING)


def redact(url: str) -> str:
    """A URL fit for the log: user name and password removed."""
    parts = urllib.parse.urlsplit(url if "://" in url else "mqtt://" + url)
    if parts.username is None and parts.password is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
