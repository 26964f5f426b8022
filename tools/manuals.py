"""Real manuals for measuring retrieval: public PDFs that Debian's documentation packages install.

They are not committed: ``write_manuals`` copies (or un-gzips) them from ``/usr/share/doc`` into a
folder, under the names the question sets in ``include/query/questions/`` expect. A manual
whose package is missing is reported with the package to install, never fetched.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Manual:
    filename: str  # the name the question set expects
    source: Path  # where the Debian package installs it (.gz is un-gzipped)
    package: str
    question_set: str  # file name under include/query/questions/


MANUALS: tuple[Manual, ...] = (
    Manual("libtasn1.pdf", Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"), "libtasn1-doc", "libtasn1.jsonl"),
    Manual("bzip2-manual.pdf", Path("/usr/share/doc/bzip2/manual.pdf.gz"), "bzip2-doc", "bzip2.jsonl"),
    Manual("nettle.pdf", Path("/usr/share/doc/nettle-dev/nettle.pdf.gz"), "nettle-dev", "nettle.jsonl"),
)


class ManualMissing(RuntimeError):
    pass


def write_manuals(folder: Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """The manuals (all, or those named) as PDFs in ``folder``; ``ManualMissing`` names the package
    that provides one that is not installed."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = [m for m in MANUALS if names is None or m.filename in names]
    missing = [m for m in chosen if not m.source.exists()]
    if missing:
        packages = " ".join(sorted({m.package for m in missing}))
        raise ManualMissing(f"{', '.join(m.filename for m in missing)} not installed: apt-get install {packages}")
    paths = []
    for manual in chosen:
        target = folder / manual.filename
        if manual.source.suffix == ".gz":
            with gzip.open(manual.source, "rb") as packed, target.open("wb") as out:
                shutil.copyfileobj(packed, out)
        else:
            shutil.copyfile(manual.source, target)
        paths.append(target)
    return paths
