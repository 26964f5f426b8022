"""A precision corpus for redaction: real technical manuals, free of PII, from Debian's packages.

What the labelled corpus (``tests/pii_corpus.py``) cannot show is how often redaction destroys data
that is not PII: data tables (runs of same-width numbers), numeric output, code with hex and
addresses, references with ISBNs and DOIs. These manuals are full of them. Each was read for
contact details: none holds a phone number, an SSN or a card number (their e-mail addresses are
public mailing lists, and e-mail addresses are redacted on purpose). So every PHONE, SSN or
CREDIT_CARD redaction made in them is a false one.

They are not committed (16 MB): ``write_corpus`` takes each from where its package installs it, or
downloads the pinned package with ``apt-get download`` (Debian's registry, as pip's is PyPI) into a
cache and unpacks it there. Some are *held out*: rules are tuned on the others, and the held-out
ones are reported apart, to tell a rule that generalizes from one fitted to its examples.

    python -m tools.precision_corpus <folder>     # writes <folder>/tuning/*.pdf and <folder>/held_out/*.pdf
    python -m tools.precision_corpus              # only fetches what is missing (the install does it)
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from include.settings import PROJECT_ROOT


@dataclass(frozen=True)
class Manual:
    filename: str
    package: str
    version: str  # pinned: the corpus is the same on every machine
    path: str  # where the package installs it (a .gz is un-gzipped)
    held_out: bool
    holds: str  # what in it tempts a redactor


_R = "r-doc-pdf", "4.2.2.20221110-2", "/usr/share/doc/r-doc-pdf/manual"
MANUALS: tuple[Manual, ...] = (
    Manual("R-data.pdf", *_R[:2], f"{_R[2]}/R-data.pdf", False, "data tables of five-digit measurements"),
    Manual("R-intro.pdf", *_R[:2], f"{_R[2]}/R-intro.pdf", False, "numeric output, tables of counts"),
    Manual("R-exts.pdf", *_R[:2], f"{_R[2]}/R-exts.pdf", False, "profiler output, C code, constants"),
    Manual("R-FAQ.pdf", *_R[:2], f"{_R[2]}/R-FAQ.pdf", False, "ISBNs, mailing lists"),
    Manual("gnuplot.pdf", "gnuplot-doc", "5.4.4+dfsg1-2", "/usr/share/doc/gnuplot/gnuplot.pdf", False,
           "inline data blocks, matrices, dates"),
    Manual("shared-mime-info-spec.pdf", "shared-mime-info", "2.2-1",
           "/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf", False, "hex dumps"),
    Manual("R-admin.pdf", *_R[:2], f"{_R[2]}/R-admin.pdf", True, "versions, paths, build output"),
    Manual("R-lang.pdf", *_R[:2], f"{_R[2]}/R-lang.pdf", True, "code, numeric output"),
    Manual("R-ints.pdf", *_R[:2], f"{_R[2]}/R-ints.pdf", True, "memory sizes, code"),
    Manual("libtasn1.pdf", "libtasn1-doc", "4.19.0-2+deb12u1", "/usr/share/doc/libtasn1-doc/libtasn1.pdf", True,
           "object identifiers (1 2 840 10040 4 3)"),
    Manual("bzip2-manual.pdf", "bzip2-doc", "1.0.8-5", "/usr/share/doc/bzip2/manual.pdf.gz", True,
           "sizes, timings, command lines"),
    Manual("nettle.pdf", "nettle-dev", "3.8.1-2", "/usr/share/doc/nettle-dev/nettle.pdf.gz", True,
           "hex test vectors, C code"),
)
CACHE = PROJECT_ROOT / ".work" / "precision-corpus"


class CorpusUnavailable(RuntimeError):
    pass


def _installed(manual: Manual) -> Path | None:
    """The manual where its package put it, if the installed package is the pinned version."""
    path = Path(manual.path)
    if not path.exists():
        return None
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", manual.package], capture_output=True, text=True)
    return path if version.returncode == 0 and version.stdout.strip() == manual.version else None


def _downloaded(manual: Manual, cache: Path) -> Path:
    """The manual out of the pinned package, downloaded (once) and unpacked in ``cache``."""
    unpacked = cache / f"{manual.package}_{manual.version}"
    target = unpacked / manual.path.lstrip("/")
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fetched = subprocess.run(["apt-get", "download", f"{manual.package}={manual.version}"], cwd=cache,
                             capture_output=True, text=True)
    debs = sorted(cache.glob(f"{manual.package}_*.deb"))
    if fetched.returncode != 0 or not debs:
        raise CorpusUnavailable(f"{manual.filename}: apt-get download {manual.package}={manual.version} failed: "
                                f"{fetched.stderr.strip()[-500:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(unpacked)], check=True)
    return target


def fetch(cache: Path = CACHE) -> list[Path]:
    """Every manual's source: where its package installed it, else out of the downloaded package."""
    return [_installed(manual) or _downloaded(manual, cache) for manual in MANUALS]


def write_corpus(folder: Path, cache: Path = CACHE) -> dict[str, list[Path]]:
    """Every manual as a PDF under ``folder/tuning`` or ``folder/held_out``; by split."""
    written: dict[str, list[Path]] = {"tuning": [], "held_out": []}
    for manual, source in zip(MANUALS, fetch(cache)):
        split = "held_out" if manual.held_out else "tuning"
        target = folder / split / manual.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".gz":
            with gzip.open(source, "rb") as packed, target.open("wb") as out:
                shutil.copyfileobj(packed, out)
        else:
            shutil.copyfile(source, target)
        written[split].append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.precision_corpus", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", help="where to write the PDFs (none: only fetch)")
    args = parser.parse_args(argv)
    try:
        if args.folder is None:
            print(f"precision corpus: {len(fetch())} manuals ready")
            return 0
        written = write_corpus(args.folder)
    except CorpusUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    for split, paths in written.items():
        print(f"{split}: {', '.join(path.name for path in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
