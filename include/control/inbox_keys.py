"""Which inbox keys the pipeline takes, and why it leaves the others where they are.

Every key the pipeline takes is in one normal form, so each document has exactly one name for
its quarantine, its artifacts and its lines in the log and the report:

- no control character (a newline in a key would forge a line wherever it is printed);
- no empty, ``.`` or ``..`` segment (``inbox//a.pdf`` and ``inbox/a.pdf`` are two objects that
  would share one quarantine key);
- short enough that the longest key made from it, its quarantine note, keeps within S3's limit of
  1,024 bytes (S3's own bound, so it is not a setting).

A key that breaks one is refused with the reason: left in the inbox, untouched, named in the run
report (its control characters escaped), and not counted as work by the sensor.
"""

from __future__ import annotations

import re

from include.control.quarantine import NOTE_SUFFIX
from include.documents import Unreadable
from include.settings import PipelineSettings
from include.storage import ObjectInfo, relative_key, split_s3_uri, uri_scheme

S3_MAX_KEY_BYTES = 1024
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``, ``\\x1b``): fit for one line of a log."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def refusal(settings: PipelineSettings, uri: str) -> str | None:
    """Why the pipeline does not take the inbox object at ``uri``, or None when it does."""
    key = relative_key(settings.inbox_uri, uri)
    if control := _CONTROL.search(key):
        return (f"{printable(uri)}: the key holds a control character ({printable(control.group())}, character "
                f"{control.start() + 1}): rename the object")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        return (f"{uri}: the key has an empty, '.' or '..' segment, so another spelling of it names the same "
                "path: rename the object without them")
    quarantine_prefix = split_s3_uri(settings.quarantine_uri)[1] if uri_scheme(settings.quarantine_uri) == "s3" else ""
    longest = len(f"{quarantine_prefix.rstrip('/')}/{key}{NOTE_SUFFIX}".encode())
    if longest > S3_MAX_KEY_BYTES:
        room = len(key.encode()) - (longest - S3_MAX_KEY_BYTES)
        return (f"{uri}: the key is {len(key.encode())} bytes; its quarantine note's key would be {longest}, over "
                f"S3's limit of {S3_MAX_KEY_BYTES}: rename the object to at most {room} bytes")
    return None


def taken(settings: PipelineSettings, listing: list[ObjectInfo]) -> tuple[list[ObjectInfo], list[Unreadable]]:
    """The listed objects the pipeline takes, and the others with the reason each is refused."""
    kept: list[ObjectInfo] = []
    refused: list[Unreadable] = []
    for info in listing:
        if (reason := refusal(settings, info.uri)) is None:
            kept.append(info)
        else:
            refused.append(Unreadable(source_uri=printable(info.uri), error=reason))
    return kept, refused
