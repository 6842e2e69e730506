"""Prepare the fixed English evaluation text: Ambrose Bierce's "The Devil's Dictionary".

The text (public domain; 1911 edition) comes from Debian's ``dict-devil`` package,
version 1.0-13.1, as a dictd database (``devil.dict.dz`` + ``devil.index``). This
script reads the package (``apt-get download dict-devil`` by default, or ``--deb
FILE``), checks its sha256, takes every dictionary entry in the order of the book
(the database's own header entries left out), and writes them, one blank line
apart, to ``edgesmith/data/text/``:

- ``devils-dictionary-test.txt``: every 10th entry (entries 9, 19, 29, ...), the
  held-out split that all language-model quality figures are computed on;
- ``devils-dictionary-train.txt``: the other entries, for calibration and fine-tuning.

The output is committed, so tests and benchmarks never download anything; running the
script again must reproduce it byte for byte.

Usage:
    python scripts/prepare_eval_text.py [--deb dict-devil_1.0-13.1_all.deb]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "dict-devil"
VERSION = "1.0-13.1"
DEB_SHA256 = "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154"
OUT = Path(__file__).resolve().parents[1] / "edgesmith" / "data" / "text"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _ar_members(data: bytes) -> dict[str, bytes]:
    """Members of an ``ar`` archive (a .deb is one)."""
    if not data.startswith(b"!<arch>\n"):
        raise SystemExit("not a .deb (ar) archive")
    pos, members = 8, {}
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def _dictd_number(text: str) -> int:
    """dictd's index numbers: base 64, most significant digit first."""
    value = 0
    for ch in text:
        value = value * 64 + _B64.index(ch)
    return value


def read_entries(deb: bytes) -> list[str]:
    """The dictionary's entries, in book order, from the package's dictd database."""
    members = _ar_members(deb)
    data_name = next(n for n in members if n.startswith("data.tar"))
    with tarfile.open(fileobj=io.BytesIO(members[data_name])) as tar:
        files = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    text = gzip.decompress(files["devil.dict.dz"])
    spans = set()
    for line in files["devil.index"].decode("utf-8").splitlines():
        word, offset, length = line.split("\t")[:3]
        if not word.startswith("00database"):
            spans.add((_dictd_number(offset), _dictd_number(length)))
    entries = []
    for offset, length in sorted(spans):
        body = text[offset:offset + length].decode("utf-8")
        lines = [ln.rstrip() for ln in body.strip("\n").splitlines()]
        entries.append("\n".join(lines).strip())
    return [e for e in entries if e]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deb", help=f"the {PACKAGE}_{VERSION}_all.deb file (default: apt-get download it)")
    args = parser.parse_args(argv)
    if args.deb:
        deb = Path(args.deb).read_bytes()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=tmp, check=True)
            deb = next(Path(tmp).glob("*.deb")).read_bytes()
    digest = hashlib.sha256(deb).hexdigest()
    if digest != DEB_SHA256:
        raise SystemExit(f"{PACKAGE} {VERSION}: sha256 {digest} is not the pinned {DEB_SHA256}")
    entries = read_entries(deb)
    test = [e for i, e in enumerate(entries) if i % 10 == 9]
    train = [e for i, e in enumerate(entries) if i % 10 != 9]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("test", test)):
        path = OUT / f"devils-dictionary-{name}.txt"
        path.write_text("\n\n".join(part) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(OUT.parents[2])}: {len(part)} entries, {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
