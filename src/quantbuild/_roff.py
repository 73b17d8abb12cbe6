"""Readable text from man(7) pages (the Linux man-pages project's roff), without groff installed."""

from __future__ import annotations

import re

# roff's special characters as they read in plain text; unknown ones are dropped.
_CHARS = {"aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'", "em": "--", "en": "-", "bu": "*",
          "co": "(c)", "rg": "(R)", "mu": "x", "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "lt": "<", "gt": ">",
          "ga": "`", "at": "@", "hy": "-", "mi": "-", "pl": "+", "eq": "=", "ba": "|", "br": "|", "de": "deg",
          "<=": "<=", ">=": ">=", "!=": "!=", "->": "->", "<-": "<-", "**": "*", "Fo": "<<", "Fc": ">>",
          "lB": "[", "rB": "]", "lC": "{", "rC": "}", "ul": "_", "ss": "ss", "dg": "+"}
_NAMED = re.compile(r"\\\*?\((..)|\\\*?\[([^\]]*)\]")
_DROP = [
    re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)"),    # font changes
    re.compile(r"\\\*."),                       # one-letter strings
    re.compile(r"\\s[+-]?\d"),                  # size changes
    re.compile(r"\\[&:%|^,/)c]"),               # zero-width and break controls
]
_ALTERNATING = {"BR", "RB", "IR", "RI", "BI", "IB"}   # arguments joined without spaces, fonts alternating
_JOINED = {"B", "I", "SM", "SB"}
# Macros that end a paragraph; the rest that are not text are layout only and dropped.
_BREAKS = {"PP", "P", "LP", "sp", "br", "RS", "RE", "TP", "TQ", "IP", "HP", "nf", "fi", "EX", "EE", "in", "SH",
           "SS", "UR", "MT", "YS", "SY", "ti", "ne"}


def _unescape(line: str) -> str:
    line = line.replace("\\\\", "\x00").replace("\\e", "\x00")   # literal backslashes survive the rest
    line = _NAMED.sub(lambda m: _CHARS.get(m.group(1) or m.group(2), ""), line)
    line = line.replace("\\-", "-")
    for pattern in _DROP:
        line = pattern.sub("", line)
    line = re.sub(r"\\[ ~0]", " ", line)
    line = re.sub(r"\\(.)", r"\1", line)
    return line.replace("\x00", "\\")


def _arguments(rest: str) -> list[str]:
    return [a[1:-1].replace('""', '"') if a.startswith('"') and a.endswith('"') and len(a) > 1 else a.strip('"')
            for a in re.findall(r'"(?:[^"]|"")*"?|\S+', rest)]


def man_to_text(source: str) -> str:
    """A man page's text: headings, filled paragraphs, code and synopses line by line, tables as rows."""
    blocks: list[str] = []
    lines: list[str] = []
    fill = True
    table = spec = False

    def flush() -> None:
        if lines:
            blocks.append(" ".join(lines) if fill else "\n".join(lines))
            lines.clear()

    for raw in source.splitlines():
        if raw.startswith(('.\\"', "'\\\"", ".\\#")) or raw.strip() in (".", "'"):
            continue
        if raw.startswith(".TS"):
            flush()
            table = spec = True
            continue
        if raw.startswith(".TE"):
            flush()
            table = False
            continue
        if table:
            if spec:   # the tbl format lines end with a period
                spec = not raw.rstrip().endswith(".")
            elif not raw.startswith((".", "'")):
                row = _unescape(raw.replace("T{", "").replace("T}", "")).replace("\t", " ").strip()
                if row and not re.fullmatch(r"[_=\s]*", row):
                    lines.append(row)
            continue
        if raw.startswith((".", "'")):
            match = re.match(r"[.']\s*(\S+)\s?(.*)", raw)
            if not match:
                continue
            name, rest = match.groups()
            if name in _BREAKS:
                flush()
                if name in ("nf", "EX"):
                    fill = False
                elif name in ("fi", "EE"):
                    fill = True
                if name in ("SH", "SS") and rest:
                    blocks.append(_unescape(" ".join(_arguments(rest))))
                elif name == "IP" and rest:
                    tag = _arguments(rest)[0]
                    if tag not in ("\\(bu", "*"):
                        lines.append(_unescape(tag))
            elif name in _ALTERNATING or name in _JOINED:
                text = ("" if name in _ALTERNATING else " ").join(_arguments(rest))
                if text:
                    lines.append(_unescape(text))
            continue
        text = _unescape(raw)
        if not fill:
            lines.append(text.rstrip())
        elif text.strip():
            lines.append(text.strip())
        else:
            flush()
    flush()
    return "\n\n".join(b.strip("\n") for b in blocks if b.strip())
