"""One Markdown page for a folder of benchmark results: ``shiftlab report benchmarks/results``.

A folder is a *benchmark folder* (:func:`is_benchmark_folder`) when it holds ``*.json`` files
and no run folder below it (no ``metrics.json`` anywhere; those folders go to
:func:`shiftlab.experiment.report.report`). :func:`write_bench_report` renders every
top-level ``*.json`` file of it into ``REPORT.md`` (written atomically) with:

* a title, a note when a file says it holds quick-profile (non-acceptance) numbers, the
  problems found, and a table of contents;
* **Peers**: every speed ratio against a peer library found in the files: the ``ratios``
  blocks of :func:`~shiftlab.experiment.report.write_benchmark` (``ratio = peer_s / ours_s``,
  > 1: shiftlab is faster, with the entry's other ratio-like numbers such as
  ``ratio_of_min`` or ``ratio_cpu``), numeric keys named like a ratio or speed-up elsewhere
  (e.g. ``speed_ratio_ours_over_theirs``), and the pass/fail flags of those files;
* one section per file (sorted by name): its benchmark name, date, command, machine and
  versions, then its content. Files with a ``rows`` list (the ``write_benchmark`` shape) are
  rendered by :func:`~shiftlab.experiment.report.render_benchmark_doc` (accuracies in %,
  95% CI half-widths), at most :data:`MAX_ROWS` rows. Any other JSON (the ``*_tables.json``
  lists, ``ssl_peer.json``'s nested object, the extra keys of a ``rows`` file) gets a
  generic rendering: scalars as a field/value table, sibling objects with mostly the same
  keys side by side (``ours`` / ``theirs``), objects of objects and lists of objects as
  tables, lists of strings as bullets. Long lists are truncated with a note saying how many
  items the JSON holds; numbers have 4 significant digits;
* the folder's ``*.png`` files as Markdown images with links relative to ``REPORT.md``:
  each in the section of the JSON file whose stem prefixes its name (``ssl_mnist_to_usps.png``
  in ``ssl.json``'s section), the others under **Other plots**.

A file that cannot be read (not UTF-8, invalid JSON) does not stop the page: its section
says why, the problem is listed at the top of the page and in
:attr:`BenchReport.warnings` (the CLI prints them on stderr), and every other file is
rendered as usual.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shiftlab.errors import ShiftlabError
from shiftlab.experiment.report import BENCHMARK_ROW_KEYS, render_benchmark_doc
from shiftlab.io import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "BenchFile",
    "BenchReport",
    "PeerRatio",
    "is_benchmark_folder",
    "load_bench_files",
    "peer_ratios",
    "render_bench_page",
    "write_bench_report",
]

REPORT_NAME = "REPORT.md"
MAX_ROWS = 120
"""Rows of a ``rows`` table shown (the JSON keeps them all)."""
MAX_RECORDS = 40
"""Items of any other list of objects shown as table rows."""
MAX_COLUMNS = 14
"""Columns of a generic table; the others are named in a note."""
MAX_INLINE = 6
"""Values of a list of numbers written inline in one cell."""
MAX_BULLETS = 20
"""Items of a list of strings shown as bullets."""
MAX_CELL = 400
"""Characters of one string cell."""
MAX_DEPTH = 3
"""Levels of nested objects flattened into dotted keys (``ours.knn.acc``)."""
MAX_ITEM_SECTIONS = 10
"""A top-level list of at most this many objects gets one subsection per object."""
META_KEYS = ("name", "benchmark", "date", "command", "machine", "versions")
RATIO_KEY = re.compile(r"(^|_)(ratio|speedup|speed_up|x_faster|faster)(_|$)", re.IGNORECASE)
_LABEL_KEYS = ("scenario", "name", "task", "config", "recipe")


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class BenchFile:
    """One ``*.json`` file of the folder.

    Attributes:
        path: the file.
        doc: its parsed content (``None`` when it could not be read).
        error: why it could not be read (``None`` when it was).
    """

    path: Path
    doc: Any = None
    error: str | None = None

    @property
    def name(self) -> str:
        """The file name."""
        return self.path.name


@dataclass(frozen=True)
class PeerRatio:
    """One speed comparison against a peer library.

    Attributes:
        file: the JSON file it comes from.
        what: what was timed (the ``ratios`` key, or the dotted path of the key).
        ours_s: our seconds, when recorded.
        peer_s: the peer's seconds, when recorded.
        ratio: the ratio (``peer_s / ours_s`` for ``ratios`` entries; else the key's value).
        key: the key the ratio was read from (``ratio`` for ``ratios`` entries).
        others: the entry's other ratio-like numbers, ``name: value``.
        note: the entry's note or the verdict recorded beside it.
    """

    file: str
    what: str
    ours_s: float | None
    peer_s: float | None
    ratio: float | None
    key: str = "ratio"
    others: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class BenchReport:
    """What :func:`write_bench_report` produced.

    Attributes:
        markdown: the text of ``REPORT.md``.
        path: the file written.
        files: the JSON files rendered (one section each), in page order.
        images: the PNG files embedded.
        peers: the speed comparisons of the Peers section.
        warnings: files that could not be read (also on the page).
    """

    markdown: str
    path: Path
    files: list[Path]
    images: list[Path]
    peers: list[PeerRatio] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _has_run_below(folder: Path) -> bool:
    for _dirpath, dirnames, filenames in os.walk(folder):
        if "metrics.json" in filenames:
            return True
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return False


def is_benchmark_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder of benchmark results: it holds ``*.json`` files and no run
    folder below it (no ``metrics.json`` anywhere, which would make it a runs folder)."""
    p = Path(path)
    if not p.is_dir():
        return False
    if not any(f.suffix == ".json" and f.is_file() for f in p.iterdir()):
        return False
    return not _has_run_below(p)


def load_bench_files(folder: str | os.PathLike[str]) -> list[BenchFile]:
    """Read every top-level ``*.json`` file of ``folder``, sorted by name.

    A file that cannot be read is returned with its ``error`` (and logged); it never stops
    the others.

    Raises:
        ShiftlabError: if ``folder`` is not a folder or holds no ``*.json`` file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ShiftlabError(f"{root} is not a folder of benchmark results.")
    paths = sorted((f for f in root.iterdir() if f.suffix == ".json" and f.is_file()), key=lambda f: f.name)
    if not paths:
        raise ShiftlabError(f"No benchmark result (*.json) in {root}; run a script of benchmarks/ first.")
    out: list[BenchFile] = []
    for p in paths:
        try:
            out.append(BenchFile(p, json.loads(p.read_text(encoding="utf-8"))))
        except json.JSONDecodeError as exc:
            out.append(BenchFile(p, error=f"invalid JSON ({exc})"))
        except UnicodeDecodeError as exc:
            out.append(BenchFile(p, error=f"not UTF-8 text ({exc})"))
        except OSError as exc:
            out.append(BenchFile(p, error=f"cannot be read ({exc})"))
    for f in out:
        if f.error:
            log.warning("%s: %s", f.path, f.error)
    return out


# ----------------------------------------------------------------------------- formatting


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _is_scalar_list(v: Any) -> bool:
    return isinstance(v, list) and all(_is_scalar(x) for x in v)


def _is_prose(v: Any) -> bool:
    """A list of sentences (shown as bullets, not squeezed into one cell)."""
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v) and any(len(x) > 60 for x in v)


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return "n/a"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4g}"


def _short(text: str, limit: int = MAX_CELL) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _fmt(v: Any) -> str:
    """One value as a table cell: numbers with 4 significant digits, long lists truncated."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "true" if v else "false"
    if _is_number(v):
        return _num(v)
    if isinstance(v, str):
        return _short(v) if v else "(empty)"
    if isinstance(v, list):
        if not v:
            return "[]"
        if all(_is_scalar(x) for x in v):
            shown = ", ".join(_fmt(x) for x in v[:MAX_INLINE])
            more = f", … ({len(v)} values)" if len(v) > MAX_INLINE else ""
            return _short(f"[{shown}{more}]")
        return f"({len(v)} items)"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return _short("{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}")
    return _short(str(v))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: Sequence[str] | None = None) -> list[str]:
    align = align or ["l"] * len(header)
    out = ["| " + " | ".join(_cell(h) for h in header) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _heading(level: int, text: str) -> str:
    return "#" * min(max(level, 1), 6) + " " + text


def _slug(text: str, seen: dict[str, int]) -> str:
    """The anchor GitHub gives a heading (lower case, punctuation dropped, spaces to '-')."""
    base = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def _flatten(d: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and depth < MAX_DEPTH - 1:
            out.update(_flatten(v, key + ".", depth + 1))
        else:
            out[key] = v
    return out


def _overlap(a: set[str], b: set[str]) -> float:
    return len(a & b) / min(len(a), len(b)) if a and b else 0.0


# ----------------------------------------------------------------------------- generic rendering


def _records(items: Sequence[Mapping[str, Any]], first: str | None = None,
             labels: Sequence[str] | None = None) -> list[str]:
    """A list of objects as one table (columns: the union of their flattened keys)."""
    flat = [_flatten(it) for it in items]
    cols = list(dict.fromkeys(k for f in flat for k in f))
    hidden = cols[MAX_COLUMNS:]
    cols = cols[:MAX_COLUMNS]
    header = ([first] if first else []) + cols
    body = []
    for i, f in enumerate(flat[:MAX_RECORDS]):
        lead = [labels[i]] if labels is not None else []
        body.append(lead + [_fmt(f.get(c)) if c in f else "" for c in cols])
    align = (["l"] if first else []) + ["r" if all(_is_number(f.get(c)) for f in flat if c in f) else "l"
                                        for c in cols]
    lines = _table(header, body, align)
    if len(items) > MAX_RECORDS:
        lines += ["", f"_First {MAX_RECORDS} of {len(items)} items shown; the JSON file has them all._"]
    if hidden:
        lines += ["", f"_Columns not shown: {', '.join(hidden)}._"]
    return lines


def _kv(d: Mapping[str, Any]) -> list[str]:
    return _table(["field", "value"], [[k, _fmt(v)] for k, v in d.items()])


def _label(item: Mapping[str, Any], i: int) -> str:
    for k in _LABEL_KEYS:
        if isinstance(item.get(k), (str, int, float)) and not isinstance(item.get(k), bool):
            return f"{k}: {item[k]}"
    return f"item {i + 1}"


def _bullets(items: Sequence[Any]) -> list[str]:
    out = [f"- {_short(str(x))}" for x in items[:MAX_BULLETS]]
    if len(items) > MAX_BULLETS:
        out.append(f"- … ({len(items) - MAX_BULLETS} more in the JSON file)")
    return out


def _is_record_map(v: Mapping[str, Any]) -> bool:
    """An object of (at least two) objects with mostly the same keys: one table, a row each."""
    if len(v) < 2 or not all(isinstance(x, dict) and x for x in v.values()):
        return False
    keys = [set(_flatten(x)) for x in v.values()]
    return all(_overlap(keys[0], k) >= 0.5 for k in keys[1:])


def _has_nested_lists(v: Mapping[str, Any]) -> bool:
    return any(isinstance(x, list) and x and not _is_scalar_list(x) for x in _flatten(v).values())


def _mapping(d: Mapping[str, Any], level: int) -> list[str]:
    """Render an object: scalars first (one table), then each nested part under a heading."""
    scalars: dict[str, Any] = {}
    parts: list[tuple[str, Any]] = []
    for k, v in d.items():
        if _is_scalar(v) or (_is_scalar_list(v) and not _is_prose(v)) or (isinstance(v, dict) and not v):
            scalars[str(k)] = v
        else:
            parts.append((str(k), v))
    lines: list[str] = []
    if scalars:
        lines += _kv(scalars) + [""]
    # sibling objects with mostly the same keys side by side (e.g. ours / theirs)
    plain = {k: v for k, v in parts if isinstance(v, dict) and not _is_record_map(v) and not _has_nested_lists(v)}
    groups: list[list[str]] = []
    for k in plain:
        for g in groups:
            if _overlap(set(_flatten(plain[g[0]])), set(_flatten(plain[k]))) >= 0.5:
                g.append(k)
                break
        else:
            groups.append([k])
    grouped = {k: g for g in groups if len(g) > 1 for k in g}
    done: set[str] = set()
    for k, v in parts:
        if k in done:
            continue
        if k in grouped:
            names = grouped[k]
            done.update(names)
            flats = [_flatten(plain[n]) for n in names]
            keys = list(dict.fromkeys(x for f in flats for x in f))
            lines += [_heading(level, " / ".join(names)), ""]
            lines += _table(["field", *names], [[x, *(_fmt(f[x]) if x in f else "" for f in flats)] for x in keys])
            lines.append("")
        elif isinstance(v, dict):
            lines += [_heading(level, k), ""]
            if _is_record_map(v):
                lines += _records(list(v.values()), first="key", labels=[str(x) for x in v]) + [""]
            elif _has_nested_lists(v):
                lines += _mapping(v, level + 1)
            else:
                lines += _kv(_flatten(v)) + [""]
        elif isinstance(v, list) and all(isinstance(x, dict) for x in v):
            lines += [_heading(level, f"{k} ({len(v)} items)"), ""] + _records(v) + [""]
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            lines += [_heading(level, k), ""] + _bullets(v) + [""]
        else:  # a mixed list
            lines += [_heading(level, k), ""] + _bullets([_fmt(x) for x in v]) + [""]
    return lines


def _top_list(doc: list[Any], level: int) -> list[str]:
    if not doc:
        return ["(an empty list)", ""]
    if all(isinstance(x, dict) for x in doc):
        if len(doc) <= MAX_ITEM_SECTIONS:
            lines: list[str] = []
            for i, item in enumerate(doc):
                lines += [_heading(level, _label(item, i)), ""] + _mapping(item, level + 1)
            return lines
        return _records(doc) + [""]
    return _bullets([_fmt(x) for x in doc]) + [""]


# ----------------------------------------------------------------------------- sections


def _meta(doc: Mapping[str, Any]) -> list[str]:
    lines = []
    name = doc.get("name") or doc.get("benchmark")
    if name:
        lines.append(f"- benchmark: {_short(str(name))}")
    lines.append(f"- date: {doc['date']}" if doc.get("date") else "- date: not recorded in the file")
    cmd = doc.get("command")
    lines.append(f"- command: `{cmd}`" if cmd else "- command: not recorded in the file")
    machine = doc.get("machine")
    if isinstance(machine, dict) and machine:
        lines.append("- machine: " + ", ".join(f"{k}: {_fmt(v)}" for k, v in machine.items()
                                               if v is not None and v != ""))
    versions = doc.get("versions")
    if isinstance(versions, dict) and versions:
        lines.append("- versions: " + ", ".join(f"{k} {v if v is not None else '(absent)'}"
                                                for k, v in versions.items()))
    return lines


def _notes_text(notes: Any) -> str:
    if isinstance(notes, list):
        return "\n\n".join(str(n) for n in notes)
    if isinstance(notes, dict):
        return "\n\n".join(f"{k}: {v}" for k, v in notes.items())
    return str(notes or "")


def _clean_row(row: Any) -> Any:
    """A row for :func:`render_benchmark_doc`: the standard keys as they are, extra keys as
    short strings (long per-episode lists truncated, numbers with 4 significant digits)."""
    if not isinstance(row, dict):
        return row
    return {k: (v if k in BENCHMARK_ROW_KEYS else _fmt(v)) for k, v in row.items()}


def _rows_body(doc: Mapping[str, Any], default_name: str, level: int) -> list[str]:
    rows = doc.get("rows") or []
    clean = {
        "rows": [_clean_row(r) for r in rows[:MAX_ROWS]],
        "ratios": doc.get("ratios") if isinstance(doc.get("ratios"), dict) else {},
        "notes": _notes_text(doc.get("notes")),
    }
    md = render_benchmark_doc(clean, default_name)
    body = md.split("\n", 1)[1].strip("\n").split("\n")  # its own "## Benchmark: x" title is ours
    lines = body + [""]
    if len(rows) > MAX_ROWS:
        lines += [f"_First {MAX_ROWS} of {len(rows)} rows shown; the JSON file has them all._", ""]
    extra = {k: v for k, v in doc.items() if k not in (*META_KEYS, "rows", "ratios", "notes")}
    if extra:
        lines += _mapping(extra, level)
    return lines


def _section(bf: BenchFile, level: int, companions: Mapping[str, str]) -> list[str]:
    lines = [_heading(level, bf.name), ""]
    if bf.error is not None:
        return lines + [f"**Could not be rendered:** `{bf.name}` is {bf.error}. Fix or regenerate the file "
                        "(rerun the benchmark script that writes it).", ""]
    doc = bf.doc
    stem = bf.path.stem
    if stem.endswith("_tables") and stem.removesuffix("_tables") in companions:
        base = stem.removesuffix("_tables")
        lines.append(f"- detail tables written with [{base}.json](#{companions[base]}) (same command)")
    if isinstance(doc, dict):
        lines += _meta(doc) + [""]
        if isinstance(doc.get("rows"), list):
            lines += _rows_body(doc, stem, level + 1)
        else:
            body = {k: v for k, v in doc.items() if k not in META_KEYS}
            lines += _mapping(body, level + 1) if body else ["(no fields besides the metadata)", ""]
    elif isinstance(doc, list):
        lines += [f"- a list of {len(doc)} item(s); no date, command or machine recorded in the file", ""]
        lines += _top_list(doc, level + 1)
    else:
        lines += [f"value: {_fmt(doc)}", ""]
    return lines


# ----------------------------------------------------------------------------- peers


def _ratio_entries(bf: BenchFile) -> list[PeerRatio]:
    ratios = bf.doc.get("ratios") if isinstance(bf.doc, dict) else None
    out: list[PeerRatio] = []
    if not isinstance(ratios, dict):
        return out
    for what, d in ratios.items():
        if not isinstance(d, dict):
            continue
        ours, peer, ratio = d.get("ours_s"), d.get("peer_s"), d.get("ratio")
        if not _is_number(ratio) and _is_number(ours) and _is_number(peer) and ours > 0:
            ratio = peer / ours
        others = tuple(f"{k}: {_num(v)}" for k, v in d.items()
                       if k != "ratio" and RATIO_KEY.search(k) and _is_number(v))
        out.append(PeerRatio(bf.name, str(what), float(ours) if _is_number(ours) else None,
                             float(peer) if _is_number(peer) else None,
                             float(ratio) if _is_number(ratio) else None, "ratio", others,
                             str(d.get("note") or "")))
    return out


def _seconds(d: Any) -> float | None:
    return float(d["seconds"]) if isinstance(d, dict) and _is_number(d.get("seconds")) else None


def _key_ratios(bf: BenchFile) -> list[PeerRatio]:
    """Ratio-like numeric keys outside ``rows`` and ``ratios`` (e.g. ``speed_ratio_ours_over_theirs``)."""
    out: list[PeerRatio] = []

    def walk(d: Mapping[str, Any], path: str) -> None:
        note = next((str(d[k]) for k in ("verdict", "note") if isinstance(d.get(k), str)), "")
        ours = _seconds(d.get("ours"))
        peer = next((_seconds(d.get(k)) for k in ("theirs", "peer") if _seconds(d.get(k)) is not None), None)
        for k, v in d.items():
            if path == "" and k in (*META_KEYS, "rows", "ratios"):
                continue
            if _is_number(v) and RATIO_KEY.search(str(k)):
                out.append(PeerRatio(bf.name, path + str(k), ours, peer, float(v), str(k), (), note))
            elif isinstance(v, dict):
                walk(v, f"{path}{k}.")

    if isinstance(bf.doc, dict):
        walk(bf.doc, "")
    return out


def peer_ratios(files: Sequence[BenchFile]) -> list[PeerRatio]:
    """Every speed comparison against a peer found in ``files`` (see the module docstring)."""
    out: list[PeerRatio] = []
    for bf in files:
        if bf.error is None:
            out += _ratio_entries(bf) + _key_ratios(bf)
    return out


def _flags(doc: Any) -> list[str]:
    """The pass/fail flags of a file: its top-level booleans and the boolean columns of its
    top-level lists of objects (counted)."""
    if not isinstance(doc, dict):
        return []
    out = [f"{k}: {'true' if v else 'false'}" for k, v in doc.items() if isinstance(v, bool)]
    for k, v in doc.items():
        if k == "rows" or not isinstance(v, list) or not v or not all(isinstance(x, dict) for x in v):
            continue
        for col in dict.fromkeys(c for x in v for c, y in x.items() if isinstance(y, bool)):
            vals = [x[col] for x in v if isinstance(x.get(col), bool)]
            out.append(f"{k}.{col}: {sum(vals)} of {len(vals)} true")
    return out


def _peers_section(files: Sequence[BenchFile], peers: Sequence[PeerRatio], anchors: Mapping[str, str],
                   level: int) -> list[str]:
    lines = [_heading(level, "Peers"), ""]
    if not peers:
        return lines + ["No speed comparison against a peer library was found in these files.", ""]
    lines += ["Speed comparisons against peer libraries, measured side by side on one machine (each file's "
              "section has the details). `ratio` entries are peer time / our time (> 1: shiftlab is faster); "
              "other keys keep their own name and direction (e.g. `speed_ratio_ours_over_theirs`: our images/s "
              "over the peer's).", ""]
    body = []
    for p in peers:
        speed = f"{p.ratio:.2f}×" if p.ratio is not None and math.isfinite(p.ratio) else "n/a"
        body.append([f"[{p.file}](#{anchors.get(p.file, '')})", p.what,
                     _num(p.ours_s) if p.ours_s is not None else "n/a",
                     _num(p.peer_s) if p.peer_s is not None else "n/a",
                     speed,
                     "; ".join(p.others), _short(p.note, 300)])
    lines += _table(["file", "comparison", "ours (s)", "peer (s)", "ratio", "other ratios", "note"], body,
                    ["l", "l", "r", "r", "r", "l", "l"]) + [""]
    with_peers = list(dict.fromkeys(p.file for p in peers))
    flags = [(f.name, _flags(f.doc)) for f in files if f.name in with_peers]
    flags = [(n, fl) for n, fl in flags if fl]
    if flags:
        lines += ["Checks recorded in those files:", ""]
        lines += [f"- [{n}](#{anchors.get(n, '')}): " + ", ".join(fl) for n, fl in flags] + [""]
    return lines


# ----------------------------------------------------------------------------- page


def _quick_banner(files: Sequence[BenchFile]) -> list[str]:
    quick = [f.name for f in files if isinstance(f.doc, dict)
             and (f.doc.get("acceptance_numbers") is False or f.doc.get("profile") == "quick")]
    if not quick:
        return []
    return [f"> **Quick profile** ({', '.join(quick)}): reduced epochs, episodes, images and seeds. "
            "These numbers check that every benchmark runs; they are **not** acceptance numbers.", ""]


def _image_owner(png: Path, stems: Sequence[str]) -> str | None:
    best = [s for s in stems if png.stem == s or png.stem.startswith(s + "_")]
    return max(best, key=len) if best else None


def _image(png: Path, base: Path) -> str:
    rel = os.path.relpath(png, base).replace(os.sep, "/")
    target = f"<{rel}>" if " " in rel else rel
    return f"![{png.name}]({target})"


def _display(folder: Path) -> str:
    try:
        rel = os.path.relpath(folder.resolve(), Path.cwd())
    except ValueError:
        return str(folder)
    return str(folder) if rel.startswith("..") else rel.replace(os.sep, "/")


def render_bench_page(folder: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                      ) -> tuple[str, list[BenchFile], list[Path], list[PeerRatio], list[str]]:
    """Render the benchmark page of ``folder`` (see the module docstring); writes nothing.

    Args:
        folder: the folder of benchmark result JSON files (and PNGs).
        out_dir: where the page will be written (image links are relative to it; default: ``folder``).

    Returns:
        ``(markdown, files, images, peers, warnings)``.

    Raises:
        ShiftlabError: if ``folder`` is not a folder or holds no ``*.json`` file.
    """
    root = Path(folder)
    files = load_bench_files(root)
    base = Path(out_dir) if out_dir is not None else root
    images = sorted((p for p in root.iterdir() if p.suffix.lower() == ".png" and p.is_file()), key=lambda p: p.name)
    seen: dict[str, int] = {}
    peers_anchor = _slug("Peers", seen)
    anchors = {f.name: _slug(f.name, seen) for f in files}
    stems = {f.path.stem: anchors[f.name] for f in files}
    owned: dict[str, list[Path]] = {}
    orphans: list[Path] = []
    for png in images:
        owner = _image_owner(png, list(stems))
        (owned.setdefault(owner, []) if owner else orphans).append(png)
    plots_anchor = _slug("Other plots", seen) if orphans else ""
    peers = peer_ratios(files)
    warnings = [f"{f.path}: {f.error}; its section says so and the other files are rendered."
                for f in files if f.error]

    where = _display(root)
    lines = [f"# Benchmark report: {root.resolve().name or where}", "",
             f"{len(files)} result file(s) in `{where}` (every `*.json` there, one section each) and "
             f"{len(images)} plot(s), rendered by `shiftlab report {where}`. Regenerate it after a benchmark "
             "run instead of editing it. In the `rows` tables accuracies are in % and \"95% CI\" is the "
             "half-width of the interval (mean ± this); long lists are truncated (the JSON files have "
             "everything).", ""]
    lines += _quick_banner(files)
    if warnings:
        lines += [_heading(2, "Problems"), ""] + [f"- {w}" for w in warnings] + [""]
    lines += [_heading(2, "Contents"), "", f"- [Peers](#{peers_anchor}): {len(peers)} speed comparison(s)"]
    for f in files:
        if f.error:
            what = "could not be read"
        elif isinstance(f.doc, dict) and isinstance(f.doc.get("rows"), list):
            what = f"{len(f.doc['rows'])} rows"
        elif isinstance(f.doc, list):
            what = f"{len(f.doc)} item(s)"
        else:
            what = f"{len(f.doc) if isinstance(f.doc, dict) else 1} field(s)"
        n_img = len(owned.get(f.path.stem, []))
        lines.append(f"- [{f.name}](#{anchors[f.name]}): {what}" + (f", {n_img} plot(s)" if n_img else ""))
    if orphans:
        lines.append(f"- [Other plots](#{plots_anchor}): {len(orphans)}")
    lines.append("")
    lines += _peers_section(files, peers, anchors, 2)
    for f in files:
        lines += _section(f, 2, stems)
        for png in owned.get(f.path.stem, []):
            lines += [_image(png, base), ""]
    if orphans:
        lines += [_heading(2, "Other plots"), ""]
        for png in orphans:
            lines += [_image(png, base), ""]
    markdown = "\n".join(lines).rstrip("\n") + "\n"
    return markdown, files, images, peers, warnings


def write_bench_report(folder: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> BenchReport:
    """Render ``folder``'s benchmark page and write it to ``<out_dir or folder>/REPORT.md`` atomically.

    Raises:
        ShiftlabError: if ``folder`` is not a folder or holds no ``*.json`` file.
    """
    out = Path(out_dir) if out_dir is not None else Path(folder)
    markdown, files, images, peers, warnings = render_bench_page(folder, out)
    path = atomic_write_text(out / REPORT_NAME, markdown)
    return BenchReport(markdown, path, [f.path for f in files], images, peers, warnings)
