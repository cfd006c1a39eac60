"""The access log: exactly one line per request, written when the request is truly over.

JSON (one object per line on stdout) is the default, for log shippers; ``text`` is a compact
human-readable line for local runs. Secrets never appear: keys are named by id and name only.
Request bodies (prompts) are logged only for the keys the ``log_prompts`` setting names.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import orjson

from gateway.observe.record import RequestRecord

_PROMPT_LIMIT = 16_384
# For a line holding text that UTF-8 cannot carry (a lone surrogate, valid in JSON as an escape,
# which orjson refuses): every non-ASCII character escaped, so it is still one JSON object and
# nothing is lost.
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _iso(timestamp: float) -> str:
    whole = int(timestamp)
    return _second(whole) + f".{int((timestamp - whole) * 1000):03d}Z"


@functools.lru_cache(maxsize=2)
def _second(whole: int) -> str:
    # Formatted once per second, not once per request.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def fields(record: RequestRecord) -> dict[str, Any]:
    return {
        "time": _iso(record.time),
        "request_id": record.request_id,
        "key_id": record.key_id,
        "key_name": record.key_name,
        "auth": record.auth,
        "public_key": record.public_key,
        "client": record.client,
        "method": record.method,
        "path": record.path,
        "route": record.route,
        "route_class": record.route_class,
        "model": record.model,
        "status": record.status,
        "upstream_status": record.upstream_status,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "duration_ms": round(record.duration * 1000, 3),
        "ttfb_ms": None if record.ttfb is None else round(record.ttfb * 1000, 3),
        "overhead_ms": round(record.overhead * 1000, 3),
        "queue_wait_ms": round(record.queue_wait * 1000, 3),
        "streamed": record.streamed,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "tokens_exact": record.tokens_exact,
        "outcome": record.outcome,
        "upstream": record.upstream,
        "failed_over_from": record.failed_over_from,
    }


def chosen_format(setting: str, stdout: TextIO) -> str:
    """``auto``: text for a person at a terminal, JSON for everything that reads logs."""
    if setting != "auto":
        return setting
    try:
        return "text" if stdout.isatty() else "json"
    except ValueError:  # a closed stdout
        return "json"


class AccessLog:
    def __init__(
        self,
        *,
        fmt: str = "json",
        log_prompts: tuple[str, ...] = (),
        write: Callable[[str], object] | None = None,
    ) -> None:
        self._json = fmt == "json"
        self._prompt_keys = frozenset(log_prompts)
        self._write = write or _stdout_line

    def wants_prompt(self, key_name: str | None) -> bool:
        return key_name is not None and ("*" in self._prompt_keys or key_name in self._prompt_keys)

    def __call__(self, record: RequestRecord) -> None:
        line = fields(record)
        if record.request_body is not None and self.wants_prompt(record.key_name):
            line["request_body"] = record.request_body[:_PROMPT_LIMIT].decode("utf-8", "replace")
        if self._json:
            self._write(_json_line(line))
            return
        tokens = (
            f" tokens={record.prompt_tokens}+{record.completion_tokens}" if record.route_class == "inference" else ""
        )
        auth = f" auth={record.auth}" if record.auth else ""
        self._write(
            _encodable(
                f"{line['time']} {record.status} {record.method} {_escaped(record.path)} {line['duration_ms']}ms "
                f"client={record.client} key={record.key_name or record.key_id or '-'} model={record.model or '-'} "
                f"upstream={record.upstream or '-'} outcome={record.outcome}{auth}{tokens} "
                f"id={record.request_id}"
            )
        )


def _json_line(line: dict[str, Any]) -> str:
    # orjson: the same compact JSON with UTF-8 kept, at a tenth of json's cost per line (every
    # request writes one).
    try:
        return orjson.dumps(line).decode()
    except orjson.JSONEncodeError:
        return _ASCII_ENCODER.encode(line)


def _encodable(text: str) -> str:
    """``text``, with what UTF-8 cannot carry written as a backslash escape."""
    return text if _utf8(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _stdout_line(line: str) -> None:
    # A closed or broken stdout must not cost the request its metrics and usage (the next sinks),
    # nor an admin request its answer (its audit line is written as the answer starts).
    with contextlib.suppress(OSError, ValueError):
        try:
            sys.stdout.write(line + "\n")
        except UnicodeEncodeError:
            # A stdout that is not UTF-8 (PYTHONIOENCODING, an old locale): escaped, never lost.
            sys.stdout.write(_escaped_beyond(line, sys.stdout.encoding or "ascii") + "\n")
        sys.stdout.flush()


def _escaped_beyond(line: str, encoding: str) -> str:
    # JSON's escape for each character the encoding cannot carry: still valid in a JSON line, and
    # as readable as any other in a text one.
    return "".join(char if _fits(char, encoding) else json.dumps(char)[1:-1] for char in line)


def _fits(char: str, encoding: str) -> bool:
    try:
        char.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def _escaped(text: str) -> str:
    # A refused path may hold decoded control characters; one request must stay one line.
    return text.encode("unicode_escape").decode("ascii")


class AuditLog:
    """Admin actions, one line each, on the access log's stream and in its format.

    A line names the acting key by id and name (never a secret), what was done, to what, and how
    it ended; refused attempts are written too (their key is unknown: null).
    """

    def __init__(self, *, fmt: str = "json", write: Callable[[str], object] | None = None) -> None:
        self._json = fmt == "json"
        self._write = write or _stdout_line

    def __call__(
        self,
        *,
        action: str,
        status: int,
        key_id: str | None,
        key_name: str | None,
        client: str,
        request_id: str,
        target: str | None = None,
        target_name: str | None = None,
        changed: Sequence[str] = (),
    ) -> None:
        # ``target`` is a key id (or null); ``changed`` names the fields a write changed, never values.
        line = {
            "time": _iso(time.time()),
            "type": "audit",
            "request_id": request_id,
            "key_id": key_id,
            "key_name": key_name,
            "client": client,
            "action": action,
            "target": target,
            "target_name": target_name,
            "changed": list(changed),
            "status": status,
        }
        if self._json:
            self._write(_json_line(line))
            return
        named = f" ({_escaped(target_name)})" if target_name else ""
        fields = " changed=" + ",".join(changed) if changed else ""
        self._write(
            _encodable(
                f"{line['time']} AUDIT {status} {_escaped(action)} target={_escaped(target or '-')}{named}{fields} "
                f"key={_escaped(key_name or '-')} ({key_id or '-'}) client={client} id={request_id}"
            )
        )
