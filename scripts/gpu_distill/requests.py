"""Build a JSONL file of varied, realistic user requests to a chat assistant (the prompts a target model
answers when distilling a speculative-decoding drafter; only the requests are made here):

  python scripts/gpu_distill/requests.py --data /work/distill/data --out /tmp/requests.jsonl [--n 30000] [--seed 0]

Each line is {"prompt": ..., "category": "chat"|"code"|"edit"|"summarise"}, about a quarter each. Prompts
are an instruction (many phrasings, politeness levels and constraints) plus, where it fits, a passage from
the corpus under --data (read-only): python-doc/ (Python 3.11 docs, reST sources `*.rst.txt`), fortunes/
(fortune-mod files, entries separated by `%` lines) and linux-doc/ (kernel Documentation, .rst/.txt, maybe
gzipped; a random subset of at most --linux-files files is read). Standard library only; runs in well
under a minute on two cores.
"""
import argparse
import gzip
import json
import os
import random
import re
import statistics
import sys
import time
from collections import Counter

CATEGORIES = ("chat", "code", "edit", "summarise")
MAX_PROMPT = 2500

# --------------------------------------------------------------------------------------------------
# Text cleaning
# --------------------------------------------------------------------------------------------------

UNDERLINE_CHARS = set("=-~^\"'`#*+<>_.:")
SIG_DIRECTIVES = {"function", "method", "classmethod", "staticmethod", "class", "attribute", "data",
                  "exception", "decorator", "decoratormethod", "describe", "coroutinefunction",
                  "coroutinemethod", "abstractmethod", "property", "cmdoption", "option", "envvar",
                  "opcode", "pdbcommand", "c:function", "c:macro", "c:type", "c:member", "c:var",
                  "cfunction", "cmacro", "ctype", "cmember", "cvar", "awaitablefunction",
                  "awaitablemethod", "2to3fixer", "monitoring-event", "index"}
PROSE_DIRECTIVES = {"note", "warning", "tip", "important", "hint", "attention", "caution", "danger",
                    "seealso", "admonition", "topic", "sidebar", "rubric", "impl-detail", "container",
                    "glossary", "hlist", "epigraph", "highlights", "pull-quote", "compound", "only",
                    "deprecated-removed", "versionchanged", "deprecated"}
CODE_DIRECTIVES = {"code-block", "sourcecode", "code", "testcode", "doctest", "testsetup", "productionlist"}
PY_FUNC_DIRECTIVES = {"function", "method", "classmethod", "staticmethod", "coroutinefunction",
                      "coroutinemethod", "abstractmethod", "awaitablefunction", "awaitablemethod",
                      "decorator", "decoratormethod"}

DIRECTIVE_RE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
ROLE_RE = re.compile(r":[\w:+-]+:`([^`]*)`")
LINK_RE = re.compile(r"`([^`<]*?)\s*<[^>]*>`__?")
REF_RE = re.compile(r"`([^`]+)`__?")
LITERAL_RE = re.compile(r"``(.+?)``")
STRONG_RE = re.compile(r"\*\*(.+?)\*\*")
EMPH_RE = re.compile(r"(?<![\w*])\*(?!\s)([^*\n]+?)\*(?![\w*])")
INTERP_RE = re.compile(r"(?<!\w)`([^`]+)`(?!\w)")
SUBST_RE = re.compile(r"\|([\w -]+)\|_?")
FOOT_RE = re.compile(r"\s*\[(?:#\w*|\d+|\*)\]_")
BULLET_RE = re.compile(r"^(?:[-*+\u2022]|\d+[.)]|#\.|\(\w\)|[a-z][.)])\s+")
OPTION_LINE_RE = re.compile(r"^\s*:[\w -]+:")
LICENSE_RE = re.compile(r"general public license|spdx|copyright|permission is hereby granted|without any "
                        r"warranty|licen[cs]ed under|redistribution|all rights reserved|free software "
                        r"foundation|warranty of", re.I)


def role_text(m):
    t = m.group(1).strip()
    if "<" in t and t.endswith(">"):
        t = t[:t.index("<")].strip() or t[t.index("<") + 1:-1]
    t = t.lstrip("!")
    if t.startswith("~"):
        t = t[1:].split(".")[-1]
    role = m.group(0)[1:m.group(0).index(":", 1)]
    if role in ("func", "meth") and t and not t.endswith(")"):
        t += "()"
    elif role in ("rfc", "pep") and t[:1].isdigit():
        t = role.upper() + " " + t
    elif role in ("issue", "gh") and t[:1].isdigit():
        t = ("bpo-" if role == "issue" else "gh-") + t
    return t


def clean_inline(s):
    if not any(c in s for c in "`*|\\[_"):
        return s
    s = s.replace("\\ ", "").replace("\\*", "*").replace("\\`", "`")
    keep = []

    def stash(text):
        keep.append(text)
        return "\x00%d\x00" % (len(keep) - 1)

    # literals and roles first, protected from the emphasis rules (``f(**kw)``, :func:`g(*a)`)
    s = ROLE_RE.sub(lambda m: stash(role_text(m)), s)
    s = LITERAL_RE.sub(lambda m: stash(m.group(1)), s)
    s = LINK_RE.sub(lambda m: m.group(1), s)
    s = REF_RE.sub(lambda m: m.group(1), s)
    s = STRONG_RE.sub(lambda m: m.group(1), s)
    s = EMPH_RE.sub(lambda m: m.group(1), s)
    s = INTERP_RE.sub(lambda m: m.group(1), s)
    s = SUBST_RE.sub(lambda m: m.group(1), s)
    s = FOOT_RE.sub("", s)
    s = s.replace("\\", "")
    s = re.sub("\x00(\\d+)\x00", lambda m: keep[int(m.group(1))], s)
    return s


def collapse(s):
    return re.sub(r"\s+", " ", s).strip()


def letter_ratio(s):
    if not s:
        return 0.0
    return sum(1 for c in s if c.isalpha() or c == " ") / len(s)


def words(s):
    return len(s.split())


def indent_of(line):
    return len(line) - len(line.lstrip(" "))


def is_underline(line):
    s = line.strip()
    return len(s) >= 3 and s[0] in UNDERLINE_CHARS and s == s[0] * len(s)


ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|Mr|Mrs|Dr|St|No|Fig|Sec|resp|incl|al)\.|\b[A-Z]\.)$")


def split_sentences(text):
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(`])", text)
    out = []
    for p in parts:
        if out and ABBREV.search(out[-1]):
            out[-1] += " " + p
        else:
            out.append(p)
    return [p.strip() for p in out if p.strip()]


def looks_like_code(lines):
    if not lines:
        return False
    ends = sum(1 for l in lines if l.rstrip().endswith((";", "{", "}", ");", "*/", "\\")))
    sym = sum(1 for c in "".join(lines) if c in "{}();=<>[]|#$/_\\")
    return ends / len(lines) > 0.3 or sym / max(1, len("".join(lines))) > 0.08


def good_prose(s):
    return (len(s) >= 40 and letter_ratio(s) >= 0.75 and not LICENSE_RE.search(s)
            and "http" not in s and not re.search(r"[=+|]{3,}|\.\.\.\.|__\w|\w@\w|Last modified|Document version", s)
            and s.count("|") < 2)


# --------------------------------------------------------------------------------------------------
# reST / plain-text document parsing
# --------------------------------------------------------------------------------------------------

class Doc:
    def __init__(self, source, path):
        self.source = source  # "python" | "linux"
        self.path = path
        self.title = None
        self.items = []  # ("heading", text) | ("para", text, heading) | ("code", text, lang)
        self.funcs = []  # (kind, qualname, name, args, first_sentence)
        self.questions = []


def join_para(lines):
    """Join paragraph lines; keep list items on their own line, collapse whitespace inside."""
    items = []
    base = indent_of(lines[0])
    # definition-list style: short term line followed by more-indented definition
    if len(lines) >= 2 and indent_of(lines[1]) > base and len(lines[0].strip()) < 60 \
            and not BULLET_RE.match(lines[0].strip()) and not lines[0].rstrip().endswith((".", ",")):
        term = lines[0].strip()
        return clean_inline(term) + ": " + collapse(clean_inline(" ".join(l.strip() for l in lines[1:])))
    for l in lines:
        s = l.strip()
        if BULLET_RE.match(s) or not items:
            items.append(s)
        else:
            items[-1] += " " + s
    items = [collapse(clean_inline(i)) for i in items]
    if len(items) > 1:
        items = ["- " + BULLET_RE.sub("", i) if BULLET_RE.match(i) else i for i in items]
    elif items and re.match(r"^[-*+\u2022]\s", items[0]):
        items[0] = items[0][2:]
    out = "\n".join(items)
    out = re.sub(r"\s*\((?:Contributed|Patch|Original patch|Initial patch|Suggested|Written) by [^()]*(?:\([^()]*\)[^()]*)*\)", "", out)
    return out


def dedent_block(lines):
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    while lines and not lines[0].strip():
        lines = lines[1:]
    if not lines:
        return ""
    m = min(indent_of(l) for l in lines if l.strip())
    return "\n".join(l[m:].rstrip() for l in lines)


def doctest_code(lines):
    out = []
    for l in lines:
        s = l.strip()
        if s.startswith(">>>"):
            out.append(s[4:] if len(s) > 3 else "")
        elif s.startswith("...") and (len(s) == 3 or s[3] == " "):
            out.append(l.strip()[4:] if len(s) > 3 else "")
    code = "\n".join(out).strip("\n")
    return code


def parse_rst(text, doc, ctx=None, heading=None, depth=0):
    """Parse reST-ish `text` into doc.items / doc.funcs / doc.questions. Returns the last heading."""
    ctx = ctx if ctx is not None else {"module": None, "cls": None}
    lines = text.expandtabs(8).split("\n")
    n = len(lines)
    para = []
    i = 0

    def flush():
        nonlocal para
        if not para:
            return
        raw = [l for l in para if l.strip()]
        para = []
        if not raw or OPTION_LINE_RE.match(raw[0]):
            return
        if any(l.strip().startswith(("+--", "+==", "|")) for l in raw) or looks_like_code(raw):
            return
        t = join_para(raw)
        if t.endswith("::"):
            t = t[:-3] if t.endswith(" ::") else t[:-1]
        doc.items.append(("para", t, heading))

    while i < n:
        line = lines[i]
        s = line.strip()
        if not s:
            flush()
            i += 1
            continue
        ind = indent_of(line)
        # heading (text line followed by an underline), possibly with an overline
        if i + 1 < n and is_underline(lines[i + 1]) and not is_underline(line) and \
                len(lines[i + 1].strip()) >= max(3, len(s) - 2) and not para:
            flush()
            h = collapse(clean_inline(s))
            if doc.title is None:
                doc.title = h
            heading = h
            doc.items.append(("heading", h))
            if h.endswith("?") and 15 <= len(h) <= 150:
                doc.questions.append(h)
            i += 2
            continue
        if is_underline(line) and not para:
            i += 1
            continue
        m = DIRECTIVE_RE.match(line)
        if m:
            flush()
            name, arg = m.group(2).lower(), m.group(3).strip()
            j = i + 1
            body = []
            while j < n and (not lines[j].strip() or indent_of(lines[j]) > ind):
                body.append(lines[j])
                j += 1
            i = j
            if name in ("module", "currentmodule", "py:module", "py:currentmodule"):
                ctx["module"] = arg or None
                continue
            if name in CODE_DIRECTIVES:
                k = 0
                while k < len(body) and (OPTION_LINE_RE.match(body[k]) or not body[k].strip()):
                    k += 1
                code = dedent_block(body[k:])
                lang = arg.split()[0].lower() if arg else ""
                if code:
                    if lang in ("pycon",) or code.lstrip().startswith(">>>"):
                        code, lang = doctest_code(code.split("\n")), "python"
                    doc.items.append(("code", code, lang or "", heading))
                continue
            if name.startswith("py:"):
                name = name[3:]
            if name in SIG_DIRECTIVES:
                # skip extra signatures / options up to the first blank line
                k = 0
                while k < len(body) and body[k].strip():
                    k += 1
                inner = dedent_block(body[k:])
                if name in PY_FUNC_DIRECTIVES or name == "class":
                    if arg.endswith("\\") or ("(" in arg and ")" not in arg):
                        for cont in body[:k]:  # signature continued on the following lines
                            arg = arg.rstrip("\\ ") + " " + cont.strip()
                            if not cont.rstrip().endswith("\\"):
                                break
                    sm = re.match(r"^([\w.]+)\s*(\((.*)\))?", arg)
                    if sm:
                        fname = sm.group(1)
                        args = (sm.group(3) or "").strip()
                        if name == "class":
                            sub_ctx = dict(ctx, cls=fname.split(".")[-1])
                        else:
                            sub_ctx = ctx
                        first = None
                        for para_text in re.split(r"\n\s*\n", inner):
                            pt = para_text.strip()
                            if pt and not pt.startswith(".."):
                                first = split_sentences(collapse(clean_inline(pt)))
                                first = first[0] if first else None
                                break
                        qual = fname
                        if name != "class" and ctx.get("cls") and "." not in fname:
                            qual = ctx["cls"] + "." + fname
                        mod = ctx.get("module")
                        if mod and not qual.startswith(mod + "."):
                            qual = mod + "." + qual
                        if first:
                            doc.funcs.append((name, qual, fname.split(".")[-1], args, first))
                        shown = (ctx["cls"] + "." + fname) if name != "class" and ctx.get("cls") and "." not in fname else qual
                        parens = "(" + args + ")" if sm.group(2) else ""
                        doc.items.append(("sig", (("class " if name == "class" else "") + shown + parens)
                                          .replace("\\", ""), heading))
                        if inner and depth < 4:
                            parse_rst(inner, doc, sub_ctx, heading, depth + 1)
                        continue
                if name != "index" and arg:
                    doc.items.append(("sig", clean_inline(arg).replace("\\", ""), heading))
                if inner and depth < 4 and name not in ("index",):
                    parse_rst(inner, doc, ctx, heading, depth + 1)
                continue
            if name in PROSE_DIRECTIVES:
                inner = dedent_block(body)
                if arg and name in ("admonition", "topic", "sidebar", "rubric"):
                    pass
                if inner and depth < 4:
                    parse_rst(inner, doc, ctx, heading, depth + 1)
                continue
            continue  # anything else (toctree, image, table, kernel-doc, ...) is dropped with its body
        if s.startswith(".."):
            # comment, label or substitution definition: drop with its indented body
            flush()
            j = i + 1
            while j < n and (not lines[j].strip() or indent_of(lines[j]) > ind):
                j += 1
            i = j
            continue
        if s.startswith(">>>") and not para:
            flush()
            j = i
            block = []
            while j < n and lines[j].strip():
                block.append(lines[j])
                j += 1
            code = doctest_code(block)
            if code:
                doc.items.append(("code", code, "python", heading))
            i = j
            continue
        if para and ind > indent_of(para[0]) + 3 and not BULLET_RE.match(para[-1].strip()) and \
                indent_of(para[-1]) == indent_of(para[0]) and not para[-1].rstrip().endswith(",") and \
                False:
            pass
        para.append(line)
        if s.endswith("::"):
            pind = indent_of(para[0])
            flush()
            j = i + 1
            block = []
            while j < n and (not lines[j].strip() or indent_of(lines[j]) > pind):
                block.append(lines[j])
                j += 1
            code = dedent_block(block)
            if code:
                lang = "python" if doc.source == "python" else ""
                if code.lstrip().startswith(">>>"):
                    code = doctest_code(code.split("\n"))
                doc.items.append(("code", code, lang, heading))
            i = j
            continue
        i += 1
    flush()
    return heading


def read_text(path):
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read(400_000)
        else:
            with open(path, "rb") as f:
                data = f.read(400_000)
    except OSError:
        return None
    if b"\x00" in data[:4096]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def walk_files(root):
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fn in sorted(filenames):
            yield os.path.join(dirpath, fn)


SKIP_PY = re.compile(r"(^|/)(license|copyright|changelog|bugs|about|contents|glossary|genindex|"
                     r"py-modindex|search)\.rst\.txt$|whatsnew/changelog|/c-api/")


def load_python_docs(root):
    docs = []
    for p in walk_files(root):
        rel = os.path.relpath(p, root)
        if not p.endswith(".rst.txt") or SKIP_PY.search("/" + rel):
            continue
        text = read_text(p)
        if not text:
            continue
        d = Doc("python", rel)
        parse_rst(text, d)
        docs.append(d)
    return docs


def load_linux_docs(root, max_files, rng):
    cands = {}
    for p in walk_files(root):
        rel = os.path.relpath(p, root)
        base = rel[:-3] if rel.endswith(".gz") else rel
        if not (base.endswith(".rst") or base.endswith(".txt")):
            continue
        if "/translations/" in "/" + base or "/ABI/" in "/" + base or "devicetree/bindings" in base:
            continue
        key = base
        for pre in ("Documentation/", "html/_sources/"):
            if key.startswith(pre):
                key = key[len(pre):]
        if key.endswith(".rst.txt"):
            key = key[:-4]
        if key.endswith(".txt"):
            key = key[:-4]
        elif key.endswith(".rst"):
            key = key[:-4]
        if key not in cands or rel.startswith("Documentation/"):
            cands[key] = p
    keys = sorted(cands)
    rng.shuffle(keys)
    docs = []
    for k in keys[:max_files]:
        text = read_text(cands[k])
        if not text:
            continue
        d = Doc("linux", k)
        try:
            parse_rst(text, d)
        except RecursionError:
            continue
        docs.append(d)
    return docs


def load_fortunes(root):
    out = []
    for p in walk_files(root):
        fn = os.path.basename(p)
        if fn.endswith((".dat", ".u8", ".gz")) or fn.startswith(".") or "ascii-art" in fn:
            continue
        text = read_text(p)
        if not text:
            continue
        text = text.replace("\r", "")
        while "\x08" in text:
            text = re.sub(r".\x08", "", text)
            text = text.replace("\x08", "")
        for entry in re.split(r"\n%\n", text):
            e = clean_fortune(entry)
            if e and 40 <= len(e) <= 900 and letter_ratio(e) >= 0.7 and not LICENSE_RE.search(e):
                out.append((fn, e))
    return out


def clean_fortune(entry):
    entry = entry.strip("\n%")
    if not entry.strip():
        return ""
    paras = re.split(r"\n\s*\n", entry)
    out = []
    for para in paras:
        lines = [collapse(l) for l in para.split("\n") if l.strip()]
        if not lines:
            continue
        poem = sum(1 for l in lines if len(l) < 45) / len(lines) > 0.6 or any(":" in l[:15] for l in lines[1:])
        merged = []
        for l in lines:
            if l.startswith(("--", "-- ", "- ")) and merged:
                merged.append(l)
            elif merged and not poem and not merged[-1].startswith("--"):
                merged[-1] += " " + l
            else:
                merged.append(l)
        out.append("\n".join(merged))
    return "\n\n".join(out).strip()


# --------------------------------------------------------------------------------------------------
# Corpus pools
# --------------------------------------------------------------------------------------------------

GENERIC_HEADINGS = {
    "introduction", "overview", "description", "contents", "summary", "notes", "note", "example",
    "examples", "usage", "references", "reference", "see also", "background", "details", "todo",
    "functions", "classes", "methods", "attributes", "constants", "exceptions", "module contents",
    "api", "api reference", "credits", "authors", "author", "acknowledgements", "acknowledgments",
    "license", "changelog", "changes", "history", "conclusion", "conclusions", "abstract", "motivation",
    "rationale", "terminology", "definitions", "other", "misc", "miscellaneous", "internals", "data",
    "implementation", "implementation details", "limitations", "requirements", "status", "syntax",
    "parameters", "arguments", "return value", "options", "configuration", "interface", "interfaces",
    "basic usage", "quick start", "getting started", "faq", "bugs", "known issues", "tables",
    "structures", "data structures", "macros", "types", "documentation", "sysfs", "debugfs",
    "kernel parameters", "kconfig", "testing", "introduction and overview", "general", "purpose",
    "scope", "preface", "appendix", "glossary", "index", "contact", "maintainers", "setup", "future work",
    "todo list", "api functions", "function reference", "command line", "userspace api", "the basics",
    "basics", "tips", "caveats", "design", "architecture", "concepts", "files", "example code",
    "source code", "the code", "results", "issues", "problems", "questions", "warnings", "warning",
    "errors", "features", "future", "details", "variables", "commands", "operations", "objects",
    "entries", "fields", "flags", "modes", "values", "members", "properties", "events", "samples",
    "hardware", "software", "firmware", "support", "supported devices", "driver", "drivers", "devices", "how it works", "what is it?", "what is this?", "table of contents",
}

STOP = set("""a an the and or of to in on for with by from as at is are was were be been being this that these
those it its it's into than then there their they them can could would should will may might must shall do
does did done not no but if else when while which who whom what where why how all any each every some such
only also more most other another very so just one two three used use using uses about after before over
under between both either neither same own our we you your he she his her has have had also may however
thus therefore see e.g i.e etc following below above above-mentioned provided make makes made new file
files set sets value values function functions return returns default example way case cases need needs
part first second number without within through because since until even still already via per""".split())


def heading_ok(h):
    hl = h.lower().strip(" :.")
    if hl in GENERIC_HEADINGS or len(h) < 4 or len(h) > 70:
        return False
    if letter_ratio(h) < 0.8 or re.search(r"[<>{}=\[\]|/\\@#$%]", h) or re.match(r"^[\d.]+\s*$", h):
        return False
    if re.match(r"^(\d+(\.\d+)*\.?|[ivx]+\.|[A-Z]\.)\s", h):
        return False
    if len(h.split()) > 9 or (len(h.split()) == 1 and (h.isupper() or len(h) < 6 or not h.isalpha())):
        return False
    if h[0].islower() and "_" in h:
        return False
    return True


def strip_heading_number(h):
    return re.sub(r"^(\d+(\.\d+)*\.?|[ivxIVX]+\.|[A-Z]\.|Chapter \d+[:.]?|Section \d+[:.]?)\s+", "", h).strip()


def lower_first(s):
    if not s:
        return s
    w = s.split()[0]
    if len(w) > 1 and (w[1:].lower() != w[1:] or any(c.isdigit() for c in w)):
        return s  # acronym / CamelCase / identifier
    if w in ("I", "Python", "Linux", "Unix", "Windows", "Mac", "Tk", "Tkinter", "IDLE", "C", "Perl", "Java"):
        return s
    return s[0].lower() + s[1:]


PROPER = {"python", "linux", "unix", "windows", "macos", "mac", "os", "x", "tk", "tkinter", "idle", "c", "c++",
          "perl", "java", "javascript", "posix", "intel", "amd", "arm", "google", "microsoft", "apple", "gnu",
          "ieee", "i", "unicode", "ascii", "utf-8", "internet", "ethernet", "bluetooth", "usb", "pci", "numa",
          "kvm", "xen", "qemu", "android", "debian", "red", "hat", "fedora", "ubuntu", "bsd", "freebsd"}


def heading_phrase(h):
    """Heading as a phrase usable mid-sentence: 'Memory Barriers' -> 'memory barriers'; keeps acronyms."""
    ws = h.split()
    if any(len(w) > 1 and (w.isupper() or re.search(r"[a-z][A-Z]|[A-Z]{2}|\d|[_().]", w)) for w in ws[:1]):
        return h
    if any(len(w) > 1 and re.search(r"[A-Z]{2}|[a-z][A-Z]", w) for w in ws):
        if ws[0].lower() in STOP or ws[0].endswith("ing"):
            ws[0] = ws[0].lower()
        return " ".join(ws)
    sig = [w for w in ws if w.lower() not in STOP and w[0].isalpha()]
    title_case = len(sig) >= 2 and all(w[0].isupper() for w in sig)
    out = []
    for k, w in enumerate(ws):
        plain = re.match(r"^[A-Z][a-z'-]*[,:]?$", w) and w.lower().strip(",:") not in PROPER
        if plain and (k == 0 or title_case):
            w = w.lower()
        out.append(w)
    return " ".join(out)


def module_title(h):
    m = re.match(r"^([\w.]+)\s+(?:---|\u2014|--)\s+(.+)$", h)
    if m:
        return m.group(1), m.group(2).strip()
    return None


class Pools:
    def __init__(self, py_docs, lx_docs, fortunes):
        self.fortunes = [f for _, f in fortunes]
        self.fortunes_short = [f for f in self.fortunes if len(f) <= 500]
        self.fortunes_long = [f for f in self.fortunes if words(f) >= 60 and "\n" not in f.strip().split("\n\n")[0][:0]]
        self.questions = []
        self.headings = {"python": [], "linux": []}
        self.modules = []
        self.paras = {"python": [], "linux": []}  # (text, heading, doc)
        self.docs = {"python": py_docs, "linux": lx_docs}
        self.code = {"python": [], "pyrun": [], "other": []}  # pyrun: parses as Python
        self.funcs = []
        seen_q, seen_h = set(), set()
        for src, docs in (("python", py_docs), ("linux", lx_docs)):
            for d in docs:
                for q in d.questions:
                    q = strip_heading_number(q)
                    if q.lower() not in seen_q and letter_ratio(q) > 0.75 and 15 <= len(q) <= 150 and \
                            len(q.split()) >= 4 and not q.isupper() and \
                            not re.search(r"\b(this|these|then|it|that|here|they|them|above|below)\b", q, re.I):
                        seen_q.add(q.lower())
                        self.questions.append((src, q))
                for it in d.items:
                    if it[0] == "heading":
                        h = strip_heading_number(it[1])
                        mt = module_title(h)
                        if mt and src == "python":
                            self.modules.append(mt)
                            continue
                        if h.endswith("?"):
                            continue
                        if heading_ok(h) and (src, h.lower()) not in seen_h:
                            seen_h.add((src, h.lower()))
                            self.headings[src].append(h)
                    elif it[0] == "para":
                        t = it[1]
                        if good_prose(t):
                            self.paras[src].append((t, it[2], d))
                            for sent in (split_sentences(t) if "?" in t else ()):
                                if sent.endswith("?") and 15 <= len(sent) <= 150 and \
                                        re.match(r"^(What|Why|How|When|Where|Which|Who|Can|Is|Are|Does|Do|Should)\b", sent) and \
                                        not re.search(r"\b(this|these|that|it|above|below|here|there|they|them|we)\b", sent, re.I) \
                                        and sent.lower() not in seen_q:
                                    seen_q.add(sent.lower())
                                    self.questions.append((src, sent))
                    elif it[0] == "code":
                        self.add_code(it[1], it[2], src)
                for f in d.funcs:
                    self.funcs.append(f)

    def add_code(self, code, lang, src):
        lines = code.split("\n")
        if not (2 <= len(lines) <= 40) or len(code) > 1600 or len(code) < 40:
            return
        if max(len(l) for l in lines) > 110:
            return
        if letter_ratio(code) < 0.45 or LICENSE_RE.search(code):
            return
        if sum(1 for c in code if c.isalpha()) < 20:
            return
        if src == "python":
            try:
                compile(code, "<doc>", "exec")
                ok = True
            except (SyntaxError, ValueError):
                ok = False
            if ok and re.search(r"[=(:]", code):
                if re.search(r"\b(def|for|while|if|with|class|try|import|return)\b", code) and len(lines) >= 3:
                    self.code["pyrun"].append(code)
                self.code["python"].append(code)
                return
            lang = detect_lang(code)
            if lang:
                self.code["other"].append((code, lang))
            return
        lang = detect_lang(code)
        if lang:
            self.code["other"].append((code, lang))


def detect_lang(code):
    lines = [l for l in code.split("\n") if l.strip()]
    if sum(1 for l in lines if l.lstrip().startswith(("$ ", "# ", "% "))) >= max(1, len(lines) // 2) and \
            re.search(r"(^|\n)\s*[$#] \w", code):
        return "bash"
    if re.search(r"\b(struct|static|void|int|unsigned|return|#include|#define|u32|u64|NULL)\b", code) and \
            sum(1 for l in lines if l.rstrip().endswith((";", "{", "}"))) >= max(2, len(lines) // 4):
        return "c"
    if re.search(r"^\s*(echo|cat|mount|modprobe|insmod|make|git|ip|cd|mkdir|ls|grep|sudo|python3?|pip)\b", code, re.M) \
            and sum(1 for l in lines if re.match(r"^\s*(\$ )?[a-z][\w.-]* ", l)) >= len(lines) // 2:
        return "bash"
    return None


# --------------------------------------------------------------------------------------------------
# Instruction helpers
# --------------------------------------------------------------------------------------------------

IMPERATIVE = {"summarize", "summarise", "rewrite", "write", "explain", "make", "give", "list", "turn",
              "convert", "fix", "add", "translate", "tell", "create", "describe", "shorten", "rephrase",
              "extract", "implement", "show", "edit", "proofread", "simplify", "refactor", "reformat",
              "paraphrase", "condense", "outline", "identify", "break", "help", "compose", "draft",
              "suggest", "walk", "generate", "recommend", "compare", "clean", "port", "improve", "review",
              "find", "read", "put", "change", "replace", "split", "format", "document", "wrap", "remove"}
CONSTRAINT_WORDS = ("sentence", "bullet", "short", "words", "list", "beginner", "brief", "one-line",
                    "numbered", "concise", "paragraph", "tl;dr", "detail", "example", "steps", "title",
                    "quiz", "headline", "tweet", "only", "table", "under ", "briefly", "simple")

CHAT_SUFFIXES = ["Keep it short.", "Please keep it brief.", "Answer in two sentences.", "In two or three sentences, please.",
                 "Use bullet points.", "Explain it like I'm a beginner.", "Please be detailed.",
                 "No more than 100 words.", "Give me a concrete example.", "Be honest.",
                 "A short answer is fine.", "Use simple language.", "I'd appreciate a step-by-step answer.",
                 "Please include a quick summary at the end.", "Explain it for a complete beginner.",
                 "Answer as bullet points, max five.", "Keep it under 150 words."]
SUM_SUFFIXES = ["Keep it short.", "Use plain language.", "Don't add information that isn't in the text.",
                "Keep it under 80 words.", "Write it for a beginner.", "Be precise.", "Thanks!"]
CODE_SUFFIXES = ["Keep it short.", "Add comments.", "Explain your approach briefly.", "Include an example usage.",
                 "No external libraries, please.", "Make it readable for a beginner.", "Please include tests.",
                 "Explain the time complexity too.", "Only the code, please.", "Use type hints.",
                 "Handle edge cases.", "Thanks in advance!"]
EXPLAIN_SUFFIXES = ["Keep it short.", "Explain it for a beginner.", "Be concise.", "Thanks in advance!",
                    "Use bullet points.", "I'm new to this.", "Please be thorough."]
EDIT_SUFFIXES = ["Keep the meaning the same.", "Don't change the meaning.", "Keep it roughly the same length.",
                 "Only output the rewritten text.", "Explain what you changed afterwards.", "Thanks!",
                 "Keep the technical terms."]
GREETINGS = ["Hi! ", "Hello. ", "Hey! ", "Hi there. ", "Hey there! ", "Good morning! ",
             "Hi, I need some help. ", "Hello! ", "Hi, hope you're well. "]


def politeness(rng, instr, suffixes, p_suffix=0.22):
    """Randomly vary politeness, greeting, casing and add an optional constraint."""
    low = instr.lower()
    words_ = instr.split()
    first = words_[0].lower().strip(",:") if words_ else ""
    single = len(split_sentences(instr)) == 1
    r = rng.random()
    if first in IMPERATIVE and r < 0.32:
        body = instr[0].lower() + instr[1:]
        r2 = rng.random()
        if single and instr.endswith((".", ":")) and r2 < 0.55:
            lead = rng.choice(["Could you ", "Can you ", "Could you please ", "Would you ", "Can you please ",
                               "Would you mind helping me and "])
            if lead.startswith("Would you mind"):
                instr = "Would you mind " + gerund(body)[:-1] + "?"
            else:
                instr = lead + body[:-1] + "?"
        elif r2 < 0.8:
            instr = rng.choice(["Please ", "Please, ", "Kindly "]) + body
        else:
            instr = rng.choice(["I'd like you to ", "I need you to ", "I want you to "]) + body
    elif r < 0.45 and not re.match(r"^(hi|hello|hey|good|quick question)\b", low):
        instr = rng.choice(GREETINGS) + instr
    if suffixes and rng.random() < p_suffix and not any(w in low for w in CONSTRAINT_WORDS):
        sep = " " if instr.endswith((".", "?", "!", ":")) else ". "
        if instr.endswith(":"):
            instr = instr[:-1] + "."
        instr = instr + sep + rng.choice(suffixes)
    elif rng.random() < 0.05:
        instr = instr + rng.choice([" Thanks!", " Thank you.", " Thanks a lot.", " Cheers!"])
    if rng.random() < 0.04:
        instr = instr.lower().rstrip(".")
    return instr


def gerund(body):
    w, _, rest = body.partition(" ")
    if w.endswith("e") and not w.endswith(("ee", "ye")) and w not in ("be",):
        g = w[:-1] + "ing"
    elif re.match(r"^[^aeiou]*[aeiou][^aeiouwxy]$", w) and len(w) <= 4:
        g = w + w[-1] + "ing"
    else:
        g = w + "ing"
    return g + (" " + rest if rest else "")


VERBS = set("""return set create get add convert read remove send write open close print make run determine
call wait change delete stop execute load receive decode check start update log handle assert parse enter
encode split insert retrieve copy release clear generate perform extract push put acquire compare query raise
append mark try format look process enable compute reset force move wrap specify schedule connect bind
replace search display save rename transform translate compile accept decompress find initialize initialise
define link unregister indicate compress pack unpack test join sort count calculate build fetch apply emit
evaluate escape unescape quote unquote lock unlock flush seek truncate resize shift rotate filter map reduce
merge fill draw show hide select sleep dump serialize deserialize validate verify normalize expand collapse
strip pad round multiply divide subtract invert negate match iterate yield store restore attach detach
install cancel suspend resume discard pop peek fork spawn kill terminate read write lookup resolve detect
interrupt notify broadcast post submit list tell allocate free reverse shuffle choose sample hash sign
encrypt decrypt measure reload import export declare inspect capture configure skip abort""".split())


def base_verb(w):
    """Base form of an imperative or third-person verb starting a doc sentence, else None."""
    lw = w.lower()
    if not re.match(r"^[A-Z][a-z]+$", w):
        return None
    if lw in VERBS:
        return lw
    for suf, rep in (("ies", "y"), ("es", ""), ("s", "")):
        if lw.endswith(suf) and lw[:-len(suf)] + rep in VERBS:
            return lw[:-len(suf)] + rep
    return None


def third_person(verb):
    v = verb
    if v.endswith(("s", "sh", "ch", "x", "z", "o")):
        return v + "es"
    if len(v) > 2 and v.endswith("y") and v[-2] not in "aeiou":
        return v[:-1] + "ies"
    return v + "s"


def combine(rng, instr, passage, kind="text", lang=""):
    """Put instruction and passage together in one of several layouts."""
    r = rng.random()
    if kind == "code":
        fence_lang = lang if rng.random() < 0.85 else ""
        if r < 0.58:
            return instr + "\n\n```" + fence_lang + "\n" + passage + "\n```"
        if r < 0.82:
            return instr + "\n\n" + passage
        if r < 0.94:
            return "```" + fence_lang + "\n" + passage + "\n```\n\n" + instr
        return instr + "\n\n\"\"\"\n" + passage + "\n\"\"\""
    if r < 0.66:
        return instr + "\n\n" + passage
    if r < 0.8:
        return passage + "\n\n" + instr
    if r < 0.88:
        return instr + "\n\n\"\"\"\n" + passage + "\n\"\"\""
    if r < 0.94:
        lab = rng.choice(["Text:", "Passage:", "Here's the text:", "Input:", "TEXT:"])
        return instr + "\n\n" + lab + "\n" + passage
    return instr + "\n\n---\n" + passage + "\n---"


def truncate(text, limit):
    if len(text) <= limit:
        return text
    cut = text[:limit]
    k = max(cut.rfind(". "), cut.rfind(".\n"))
    if k > limit * 0.5:
        return cut[:k + 1]
    return cut[:cut.rfind(" ")]


# --------------------------------------------------------------------------------------------------
# Hand-written content
# --------------------------------------------------------------------------------------------------

EVERYDAY = [
    # cooking / food
    "What's a quick dinner I can make with eggs, spinach and some leftover rice?",
    "How do I keep my kitchen knives sharp without an expensive sharpener?",
    "Can you suggest a simple weekly meal-prep plan for someone who works long hours?",
    "Why does my homemade bread come out dense, and how can I fix it?",
    "What are some good vegetarian sources of protein for someone who just stopped eating meat?",
    "How long can cooked chicken safely stay in the fridge?",
    "What's the difference between baking soda and baking powder?",
    "I have guests coming on Saturday. What's an easy dessert that I can prepare the day before?",
    "How do I cook rice so it doesn't turn mushy?",
    "What spices should every beginner keep in their kitchen?",
    # travel
    "What should I pack for a week-long hiking trip in the mountains in autumn?",
    "How can I avoid jet lag when flying from Europe to Japan?",
    "Is it better to book flights early or wait for last-minute deals?",
    "What are some tips for traveling alone for the first time?",
    "How do I plan a budget road trip across three or four cities?",
    "What are good ways to stay entertained on a 12-hour train ride?",
    "How much cash should I carry when traveling abroad these days?",
    # health habits
    "How can I build a habit of drinking more water during the day?",
    "What are some simple stretches for people who sit at a desk all day?",
    "How do I stop checking my phone right before going to bed?",
    "Is it okay to exercise when I have a mild cold?",
    "What's a realistic way to cut down on sugar without feeling miserable?",
    "How can I take better breaks during a long workday?",
    "What are some tips for reducing eye strain from screens?",
    # studying
    "What's the best way to memorize vocabulary for an exam?",
    "How do I stay focused when studying at home?",
    "Can you explain the Pomodoro technique and whether it actually works?",
    "How should I take notes during a lecture so they're useful later?",
    "I have three exams next week. How should I split my study time?",
    "What are good strategies for reading a difficult textbook chapter?",
    "How can I get better at mental arithmetic?",
    # money
    "How do I start an emergency fund when my income is irregular?",
    "What's the difference between a Roth IRA and a traditional IRA, in simple terms?",
    "How can I stop impulse buying online?",
    "Is it smarter to pay off debt first or start saving?",
    "How do I make a simple monthly budget with a spreadsheet?",
    "What questions should I ask before signing a lease for an apartment?",
    "How do index funds work?",
    # work
    "How do I politely decline a meeting that I don't need to attend?",
    "What's a good way to give constructive feedback to a coworker?",
    "How can I ask my manager for more responsibility without sounding pushy?",
    "I keep procrastinating on a big report. How do I get started?",
    "How do I write a professional out-of-office message?",
    "What are some tips for running a productive one-hour workshop?",
    "How should I prepare for my annual performance review?",
    "How can I say no to extra work without hurting my career?",
    # hobbies
    "I want to learn to draw. Where should a complete beginner start?",
    "What's a good first instrument for an adult who has never played music?",
    "How do I get into birdwatching?",
    "What are some fun board games for a group of six adults?",
    "How do I start knitting, and what supplies do I need?",
    "What camera settings should I use to photograph the night sky?",
    "Can you recommend a few classic science fiction novels for someone new to the genre?",
    # pets
    "How do I stop my dog from pulling on the leash?",
    "My cat keeps scratching the sofa. What can I do?",
    "What should I know before adopting a rabbit?",
    "How often should I take my dog to the vet for checkups?",
    "How can I help a rescue dog settle into a new home?",
    "What's a good daily routine for a new puppy?",
    # home
    "How do I get rid of mold in the bathroom grout?",
    "What's the easiest way to organize a small closet?",
    "How can I lower my heating bill this winter?",
    "How do I fix a dripping faucet?",
    "What are some tips for keeping a tidy home with a busy schedule?",
    "How do I remove a red wine stain from a carpet?",
    "What should I look for when buying a used bicycle?",
    # relationships / social
    "How do I reconnect with an old friend I haven't talked to in years?",
    "My roommate and I keep arguing about chores. How can we sort it out?",
    "What are some thoughtful gift ideas for my grandmother's 80th birthday?",
    "How can I be a better listener?",
    "How do I make new friends after moving to a new city?",
    "What's a kind way to tell a friend they hurt my feelings?",
    # languages
    "What's the fastest way to get conversational in Spanish?",
    "Is it possible to learn two languages at the same time?",
    "How can I practice speaking a foreign language if I don't know any native speakers?",
    "Which is easier for an English speaker to learn, Italian or German?",
    "How do I improve my accent when speaking English?",
    # exercise
    "How should I start running if I'm completely out of shape?",
    "What's a simple 20-minute home workout with no equipment?",
    "How many rest days per week do I need when lifting weights?",
    "How do I stay motivated to exercise in winter?",
    "Is walking 10,000 steps a day really necessary?",
    "What should I eat before a morning swim?",
    # misc / general knowledge
    "Why is the sky blue?",
    "How do vaccines train the immune system?",
    "What causes the seasons on Earth?",
    "How does a credit score work?",
    "Why do cats purr?",
    "What's the difference between weather and climate?",
    "How do noise-cancelling headphones work?",
    "Can you explain how compound interest works with an example?",
    "What are some good questions to ask at a parent-teacher conference?",
    "How do I write a heartfelt thank-you note?",
    "What's a good way to plan a small birthday party on a tight budget?",
    "How do I choose a good watermelon at the store?",
]

ACTIVITIES = [
    "learning to play the guitar", "running a first 10k race", "baking sourdough bread", "learning to swim as an adult",
    "starting a podcast", "writing a novel", "keeping a journal", "learning chess", "cycling to work",
    "painting with watercolors", "learning to cook Indian food", "starting a small online shop", "rock climbing",
    "learning photography", "volunteering", "public speaking", "meditating", "learning to code",
    "moving to a new country", "working from home", "learning sign language", "going vegan", "camping with kids",
    "learning to dance salsa", "building a personal website", "saving for a house", "decluttering a home",
    "learning calligraphy", "fostering cats", "training for a half marathon", "making pottery",
    "learning to sew", "reading more books", "traveling on a budget", "learning Japanese",
    "managing a small team for the first time", "brewing coffee at home", "playing the piano",
    "doing yoga at home", "taking up woodworking", "planning a wedding", "hosting a dinner party",
]
ACTIVITY_TEMPLATES = [
    "What are some beginner mistakes to avoid when {a}?",
    "I'm thinking about {a}. Where do I start?",
    "Give me three tips for {a}.",
    "What are the pros and cons of {a}?",
    "How much time per week should I set aside for {a}?",
    "What do I need to buy or prepare before {a}?",
    "How do I stay motivated when {a}?",
    "Can you make me a four-week plan for {a}?",
    "What's the hardest part of {a}, and how do people get past it?",
    "My friend says {a} is a waste of time. What would you say to that?",
    "What are some good resources for {a}?",
    "How do I know if I'm making progress when {a}?",
]

CODE_TASKS = [
    "Write a Python function that checks whether a string is a palindrome, ignoring case and punctuation.",
    "Write a Python script that counts how often each word appears in a text file and prints the ten most common ones.",
    "Implement binary search in Python and explain its time complexity.",
    "Write a Python generator that yields Fibonacci numbers up to a given limit.",
    "Write a function that flattens an arbitrarily nested list in Python.",
    "Write a Python class for a bank account with deposit and withdraw methods; withdrawing more than the balance should raise an exception.",
    "Write a Python decorator that prints how long a function takes to run.",
    "How do I read a CSV file and compute the average of one column in Python without pandas?",
    "Write a function that merges two sorted lists into a single sorted list without calling sort().",
    "Write a Python function that converts a Roman numeral like 'MCMXCIV' to an integer.",
    "Write a context manager in Python that temporarily changes the current working directory.",
    "How do I remove duplicates from a list in Python while keeping the original order?",
    "Show me how to use argparse to build a command-line tool that takes an input file and an optional --verbose flag.",
    "Implement a simple LRU cache class in Python without using functools.",
    "Write pytest unit tests for a function is_leap_year(year).",
    "Write unittest test cases for a function that validates email addresses.",
    "Write a Python function that groups a list of dictionaries by the value of a given key.",
    "Write a Python function that splits a list into chunks of size n.",
    "Implement a stack and a queue in Python and show when you'd use collections.deque.",
    "Write an async Python function that downloads several URLs concurrently with asyncio and aiohttp.",
    "Write a Python dataclass for a 2D point with a method that returns the distance to another point.",
    "Write a function that checks whether a 9x9 Sudoku board is valid.",
    "Write a JavaScript function that debounces another function.",
    "Write a JavaScript function that deep-clones an object without using JSON.stringify.",
    "In JavaScript, how do I fetch JSON from an API with async/await and handle network errors?",
    "Write a JavaScript snippet that adds a click handler to every button with the class 'like' and toggles an 'active' class.",
    "Write a JavaScript function that formats a number of seconds as HH:MM:SS.",
    "Show how to wrap Node's fs.readFile in a Promise, and then how to do the same with fs/promises.",
    "Write a TypeScript interface for a user profile with a few optional fields, and a function that validates an object against it.",
    "Write an SQL query that finds the second highest salary in an employees table.",
    "Write an SQL query that lists every department with its number of employees, including departments with no employees.",
    "Write the SQL to create tables for a small library system (books, members, loans) with foreign keys.",
    "Write an SQL query that finds duplicate email addresses in a users table.",
    "Explain the difference between INNER JOIN, LEFT JOIN and FULL OUTER JOIN with a tiny example.",
    "Write an SQL query that computes a 7-day moving average of daily sales using window functions.",
    "How do I add an index in PostgreSQL, and how can I check whether a query actually uses it?",
    "Give me a bash one-liner that lists the 10 largest files under the current directory.",
    "Write a shell command that replaces 'foo' with 'bar' in every .txt file in a directory.",
    "How do I count the lines of code in all Python files of a project from the command line?",
    "Write a bash script that archives a directory into a timestamped tar.gz file and deletes archives older than 7 days.",
    "Give me a one-liner that shows which process is listening on port 8080 on Linux.",
    "Write a crontab line that runs a cleanup script every Monday at 9:00.",
    "Write an example JSON config for a web server with a port, TLS settings and a list of routes.",
    "Write a GitHub Actions workflow in YAML that runs pytest on every push for Python 3.10 and 3.11.",
    "Write a docker-compose.yml with a web app service and a PostgreSQL database with a persistent volume.",
    "Convert this YAML to JSON:\n\nserver:\n  host: 0.0.0.0\n  port: 8000\nfeatures:\n  - search\n  - export\ndebug: false",
    "Write a JSON Schema for an object with a name (string), an age (integer, at least 0) and an optional email.",
    "Write a regular expression that matches dates like 2023-07-15 and explain each part of it.",
    "Write a regex that extracts all hashtags from a social media post.",
    "Give me a regex that validates hex color codes such as #fff and #1a2b3c.",
    "Write Python code that uses a regex to pull every email address out of a block of text.",
    "Write a C function that counts the number of set bits in an unsigned integer.",
    "Write a Go program that reads lines from standard input and prints them with line numbers.",
    "Write a Rust function that parses a comma-separated string of integers into a Vec<i32> and returns an error for bad input.",
    "Write a Java class for a simple to-do list with add, remove and list methods.",
    "Explain what a closure is in JavaScript, with a short example.",
    "What's the difference between a list and a tuple in Python, and when should I use each?",
    "Explain recursion with a simple Python example.",
    "Write a Makefile for a small C project with src/ and include/ directories.",
    "Write a Dockerfile for a small Flask app.",
    "Write HTML and CSS for a centered login form with a username field, a password field and a submit button.",
    "Write a Python function that computes the Levenshtein distance between two strings.",
    "Write a function that converts temperatures between Celsius and Fahrenheit, plus a few tests for it.",
    "Write a Python script that renames every .jpeg file in a folder to .jpg.",
    "Write a minimal Flask API with GET and POST endpoints for a list of notes kept in memory.",
    "Implement a singly linked list in Python with append, prepend and delete methods.",
    "Write a Python function that checks whether two strings are anagrams of each other.",
    "How do I parse a date string like '2023-05-01' in Python and compute the number of days until today?",
    "What git commands do I use to undo my last commit but keep the changes in my working tree?",
    "Write a Python function that returns the n most frequent characters in a string.",
    "How do I use Python's logging module to write messages to both the console and a file?",
    "Write a SQL query that returns the top 3 best-selling products per category.",
    "Write a Python script that pings a list of hosts and prints which ones are unreachable.",
    "Write a small Python program that simulates rolling two dice 10,000 times and prints the distribution of sums.",
    "Explain the difference between `==` and `is` in Python with examples.",
    "Write a JavaScript function that removes falsy values from an array.",
    "Write a Python function that validates an IPv4 address without using the ipaddress module.",
]
CODE_PREFIXES = ["", "", "", "", "Can you help me with this? ", "I'm learning to code. ", "Quick one: ",
                 "For a side project: ", "I'm preparing for a coding exercise. ", "Please help: "]

# --------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------

HEADING_TEMPLATES = [
    "What is {h}?", "Can you explain {h} simply?", "Give me three tips for {h}.",
    "What are the pros and cons of {h}?", "How do I get started with {h}?", "Tell me about {h}{ctx}.",
    "Can you give me an overview of {h}{ctx}?", "I keep reading about {h}{ctx}. What's that about?",
    "Explain {h}{ctx} to me like I'm new to the topic.", "Why does {h} matter{ctx}?",
    "What should a beginner know about {h}{ctx}?", "What are common mistakes people make with {h}?",
    "I have to give a five-minute talk on {h}{ctx}. What should I cover?",
    "What's the most important thing to understand about {h}?", "Could you break down {h}{ctx} for me?",
    "How would you explain {h} to a colleague who has never heard of it?",
    "Is {h} something I need to care about as a {role}?", "What are some good questions to ask about {h}?",
    "Write a short FAQ about {h}{ctx}.", "What problems does {h} solve{ctx}?",
    "Can you compare {h} with the alternatives{ctx}?", "Give me a quick summary of {h}{ctx}.",
    "What are best practices for {h}{ctx}?", "I'm confused about {h}. Can you help?",
    "How has {h} changed over time{ctx}?", "Explain {h} with an analogy.",
    "What would go wrong if I ignored {h}?", "Make me a short study plan to learn about {h}{ctx}.",
]
ROLES = {"python": ["Python developer", "data scientist", "student learning Python", "hobby programmer",
                    "backend developer"],
         "linux": ["Linux user", "system administrator", "kernel newbie", "embedded developer", "DevOps engineer"]}
CTX = {"python": [" in Python", " in Python", " in the Python standard library", ""],
       "linux": [" in the Linux kernel", " in Linux", " on Linux", ""]}
MODULE_TEMPLATES = [
    "What is Python's {m} module used for?", "When should I use the {m} module in Python?",
    "Can you give me a quick tour of the {m} module?", "What's the {m} module good for? The docs say: {d}.",
    "Show me the three most useful things in Python's {m} module.", "Is {m} worth learning for everyday scripting?",
    "Explain the {m} module to a beginner.", "What are common pitfalls when using {m}?",
    "How does {m} compare to third-party alternatives?", "Give me a cheat sheet for the Python {m} module.",
]
QUESTION_WRAPS = ["{q}", "{q}", "{q}", "{q}", "Quick question: {q}", "{q} I'm still pretty new to this.",
                  "I was wondering: {q}", "Can you help me understand something? {q}",
                  "{q} A short answer is fine.", "{q} Please explain with an example.",
                  "Something I've always wondered: {q}", "{q} Explain it for a beginner.",
                  "{q} Give me the short version first, then the details.", "My colleague asked me: \"{q}\" What should I tell them?"]
FORTUNE_CHAT = [
    "What do you think this quote means?", "Tell me a story inspired by this:",
    "Is this joke funny? Explain why (or why not).", "Do you agree with this? Why or why not?",
    "Write a short poem inspired by this.", "My friend sent me this. What's the idea behind it?",
    "Can you explain the joke?", "Can you give me a real-life example of this idea?",
    "Use this as a writing prompt for a 200-word story.", "What would a philosopher say about this?",
    "Come up with a blog post title based on this and outline the post.",
    "Is there any truth to this?", "Who might have said this, and in what context?",
    "How could I apply this to my daily life?", "Write a dialogue between two friends discussing this.",
    "What's the opposite point of view?", "Turn this into a motivational message for my team.",
    "Explain the wordplay here, if there is any.", "Rate this from 1 to 10 for wisdom and explain your score.",
    "Continue this in the same style.", "Write a limerick based on this.",
    "Let's chat about this. What's your first reaction?", "What lesson could a child learn from this?",
    "Does this still apply today?", "Write a short scene for a play that ends with this line.",
]
FORTUNE_INLINE = [
    "Here's my fortune cookie for today: \"{f}\" What should I make of it?",
    "Discuss: \"{f}\"", "Someone wrote \"{f}\" on the office whiteboard. What do you think they meant?",
    "\"{f}\" Is this good advice?", "What's your take on this: \"{f}\"",
    "Tell me a story inspired by: {f}",
]

FUNC_TEMPLATES = [
    "Write a Python function that {d3}, with an example call.",
    "Write a Python function `{name}({args})` that {d3}.",
    "Can you implement a function that {d3}? Python please, and keep it simple.",
    "I need a helper in Python that {d3}. Include a docstring and a couple of tests.",
    "How would I write my own version of `{qual}`? The original {d3}.",
    "Show me a short example of using `{qual}` in Python. The docs say it should {db}.",
    "Implement `{name}` from scratch without using `{qual}` itself. It should {db}.",
    "Write a function that {d3}. Use type hints and explain the edge cases.",
    "Give me a Python snippet that demonstrates `{qual}`, which {d3}.",
    "What's a clean way to write a function that {d3}? Show the code.",
    "Write a small Python program that uses `{qual}` and prints the result.",
    "Create a Python function that {d3}. Add unit tests with pytest.",
    "In Python, how do I {db}? Show an example with `{qual}` and one without it.",
    "Write code that {d3} and explain each line.",
    "I'm practicing Python. Write a function that {d3}, then show three test inputs and their outputs.",
    "Write a well-documented Python function that {d3}.",
    "When would I use `{qual}`? Give a realistic code example.",
    "What does `{qual}({args})` do? Show a code example and the output.",
    "Write a Python function that {d3}. It should raise a helpful error for invalid input.",
    "Please write a function that {d3}. Keep it short, no classes.",
    "Write a Python function that {d3}. Then write the same thing as a one-liner if possible.",
    "Can you write a minimal example program that calls `{qual}`?",
    "Write a Python function that {d3}, and a short explanation of how it works.",
    "Give me two different implementations of a function that {d3} and compare them.",
    "Write a function that {d3}, in {lang}.",
]
OTHER_LANGS = ["JavaScript", "Go", "Rust", "TypeScript", "Java", "C#", "Ruby", "Kotlin"]
PYTHONISH = re.compile(r"\b(object|module|attribute|dict|tuple|list|bytes|str|iterator|iterable|"
                       r"exception|class|instance|method|coroutine|generator|thread|file|socket|"
                       r"interpreter|None|True|False|context|frame|descriptor|namespace|encoding)\b")
CODE_BLOCK_TEMPLATES = [
    "Explain what this code does:", "Walk me through this snippet line by line.",
    "What will this code print?", "Is there a bug in this code? If not, how could it fail?",
    "Write unit tests for this code.", "Rewrite this in JavaScript.", "What's the time complexity of this code?",
    "I found this in some documentation. Can you explain it to a beginner?",
    "What does each line here do?", "Can you explain this Python snippet?",
    "How could I extend this example to handle more cases?", "Explain this code in plain English.",
    "What concepts does this example demonstrate?", "Translate this code to Go.",
    "What would happen if I ran this?", "Can you write a similar example that does something useful?",
    "Describe the purpose of this code in one paragraph.", "What Python features are used here?",
    "Give me a step-by-step explanation of this snippet.", "Is this idiomatic Python? Why or why not?",
    "Write a pytest test file for this code.", "Could this code be written more efficiently? Show how.",
    "What inputs would break this code?", "Explain this code, then show a variation of it.",
    "Turn this snippet into a small command-line program.",
]
OTHER_CODE_TEMPLATES = {
    "bash": ["Explain what these commands do:", "What does this shell snippet do, step by step?",
             "Is it safe to run these commands? Explain each one.", "Write a bash script that automates this.",
             "Explain these commands to someone new to Linux.", "What output should I expect from this?",
             "Turn these commands into a reusable shell function.", "What do the options used here mean?",
             "How would I do the same thing in Python?", "Explain each command and flag here."],
    "c": ["Explain what this C code does.", "Walk me through this C snippet.", "Is there anything unsafe in this C code?",
          "What does this code from the Linux kernel do?", "Explain this C code to a Python programmer.",
          "What are the possible bugs or race conditions here?", "Rewrite this C snippet in Rust.",
          "Explain the data structures used in this code.", "How would I test this function?",
          "What is the purpose of each line here?"],
}

EDIT_PROSE = [
    "Rewrite this more formally.", "Rewrite this paragraph in simpler language.", "Make this more concise.",
    "Fix the grammar and spelling in this text.", "Translate this into plain English.", "Make this sound friendlier.",
    "Convert this into bullet points.", "Rephrase this for a beginner.", "Shorten this to one sentence.",
    "Rewrite this as a tweet (under 280 characters).", "Turn this into a short email to my team.",
    "Rewrite this in the active voice.", "Make this more engaging to read.",
    "Rewrite this paragraph for a non-technical audience.", "Rewrite this in the second person (\"you\").",
    "Paraphrase this so that it doesn't reuse the original wording.", "Improve the flow of this paragraph.",
    "Make this sound more confident.", "Rewrite this with a light, humorous tone.",
    "Turn this into a question-and-answer pair for a FAQ.", "Split this into shorter sentences.",
    "Remove the jargon from this.", "Edit this for clarity, then list the changes you made.",
    "Translate this into French.", "Translate this into Spanish.", "Translate this into German.",
    "Proofread this:", "Rewrite this so a 10-year-old could understand it.", "Make this sound more professional.",
    "Rewrite this as a short dialogue between a teacher and a student.", "Expand this into a longer paragraph with an example.",
    "Rewrite this in a neutral, encyclopedic tone.", "Tighten this up. Cut any unnecessary words.",
    "Rewrite the following text for a slide: a title and at most four short bullets.",
    "Make this text more polite.", "Turn this into a numbered checklist.",
]
EDIT_FORTUNE = [
    "Rewrite this joke so it works for kids.", "Make this quote sound like a corporate memo.",
    "Rewrite this in the style of Shakespeare.", "Rewrite this as if a pirate said it.",
    "Make this funnier.", "Rewrite this as a haiku.", "Turn this into a motivational poster slogan.",
    "Rewrite this in modern, casual English.", "Make this sound like a news headline and lead sentence.",
    "Rewrite this more formally.", "Fix the grammar and punctuation here.", "Shorten this to one line.",
    "Rewrite this as a text message to a friend.", "Translate this into French and keep the humor.",
    "Make this sound more optimistic.", "Rewrite this from the point of view of a cat.",
]
EDIT_CODE = [
    "Add comments to this code.", "Add error handling to this code.", "Rename the variables to be clearer.",
    "Convert this to a function.", "Add type hints to this code.", "Make this code more Pythonic.",
    "Refactor this into a small class.", "Simplify this code.", "Add docstrings and comments.",
    "Reformat this code to follow PEP 8.", "Rewrite this to use f-strings wherever strings are built.",
    "Replace any print calls with the logging module.", "Make this code handle empty or missing input gracefully.",
    "Wrap this in a main() function with an if __name__ == \"__main__\" guard.",
    "Port this snippet to JavaScript.", "Rewrite this so it's easier to test, and add one test.",
    "Make this code more readable for a junior developer.", "Add input validation to this code.",
    "Rewrite this using more descriptive names and explain the changes.",
    "Turn this interactive example into a runnable script.", "Add a command-line interface to this code using argparse.",
    "Remove any duplication in this code.", "Rewrite this to be more defensive against bad data.",
    "Convert this code to use pathlib where file paths are involved, or explain why it doesn't apply.",
    "Add assertions that check the assumptions this code makes.",
]
EDIT_OTHER_CODE = {
    "bash": ["Turn these commands into a script with error checking (set -euo pipefail).", "Add comments to these commands.",
             "Make this shell snippet safer: quote variables and check for errors.", "Rewrite these steps as a Makefile target.",
             "Convert these commands into a numbered list of instructions for a beginner.", "Rewrite this as a Python script using subprocess."],
    "c": ["Add comments to this C code.", "Rename the variables in this C code to be clearer.", "Add error checking to this C code.",
          "Reformat this C code in a consistent style and explain the changes.", "Convert this C snippet to Rust.",
          "Rewrite this C code to avoid magic numbers."],
}

SUMMARISE = [
    "Summarize this in {n} sentences.", "What is the main point of this text?", "List the key facts from this passage.",
    "Answer based on the text: {q}", "Give this section a title and a one-line summary.",
    "Turn this into a numbered list of steps.", "TL;DR please:", "Summarize this for a beginner.",
    "Write a one-paragraph summary of the following.", "What are the three most important takeaways?",
    "Extract the technical terms in this text and define each one briefly, using the text.",
    "Summarize in bullet points.", "Explain this passage to a 12-year-old in a few sentences.",
    "Write a short abstract for this text.", "What problem does this text describe, and what does it suggest?",
    "Summarize this in under 50 words.", "Based only on this text, {q}", "Create three quiz questions with answers from this passage.",
    "What requirements or constraints are mentioned here?", "Write a headline for this.", "Give me the gist of this.",
    "Does this text mention {t}? If so, quote the relevant sentence.", "Summarize this and list any open questions it leaves.",
    "Read the passage and answer: {q}", "Condense this into a single sentence.", "What is this text about?",
    "I don't have time to read this. What do I need to know?", "Summarize this for my manager, who isn't technical.",
    "Make a short outline of this text.", "Write a summary of this in {n} bullet points.",
    "Q: {q}\nAnswer using only the passage below.", "What are the main claims in this text, and how are they supported?",
    "Identify the key terms in this passage and explain how they relate.", "Summarize the passage, then suggest a good follow-up question.",
    "Rewrite this as a short set of notes I can review later.",
]
SUMMARISE_FORTUNE = ["Summarize this in {n} sentences.", "What is the main point of this text?", "TL;DR please:",
                     "Give me the gist of this.", "What is this text about?", "Condense this into a single sentence.",
                     "Write a headline for this.", "What's the message here, in a nutshell?"]
QUESTION_FORMS = ["what does it say about {t}?", "what does the text tell me about {t}?", "why does the text mention {t}?",
                  "what should I know about {t}?", "what role does {t} play here?", "what does the author say about {t}?",
                  "what are the key points about {t}?", "what can I learn about {t} from this?"]


# --------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------

def pick_term(rng, text):
    cands = Counter()
    for m in re.finditer(r"\b[\w.]*[a-z_][\w.]*\(\)|\b[A-Za-z]\w*_\w+\b|\b[a-z]+\.[a-z_]\w*\b", text):
        t = m.group(0).strip(".")
        if len(t) >= 4:
            cands[t] += 3
    for m in re.finditer(r"\b([A-Z][a-z]+(?: [A-Z][a-z]+)+|[A-Z]{2,}\w*)\b", text):
        if m.start() > 0 and text[m.start() - 2:m.start()] not in (". ", ".\n"):
            cands[m.group(1)] += 2
    for w in re.findall(r"\b[a-z][a-z-]{4,}\b", text):
        if w not in STOP:
            cands[w] += 1
    if not cands:
        return None
    top = [t for t, c in cands.most_common(4) if c >= 2] or [cands.most_common(1)[0][0]]
    return rng.choice(top)


def typo_noise(rng, text):
    """Lightly corrupt a passage so that 'fix the grammar' requests have something to fix."""
    ws = text.split(" ")
    out = []
    for w in ws:
        r = rng.random()
        if r < 0.04 and len(w) > 4 and w.isalpha():
            i = rng.randrange(1, len(w) - 2)
            w = w[:i] + w[i + 1] + w[i] + w[i + 2:]
        elif r < 0.06 and w.lower() in ("the", "a", "an"):
            continue
        elif r < 0.08 and w in ("its", "their", "your"):
            w = {"its": "it's", "their": "there", "your": "you're"}[w]
        out.append(w)
    t = " ".join(out)
    if rng.random() < 0.4:
        t = re.sub(r"\. ([A-Z])", lambda m: ". " + m.group(1).lower(), t, count=1)
    return t


class Gen:
    def __init__(self, pools, rng):
        self.p = pools
        self.rng = rng
        self.used = Counter()

    def take(self, pool, cap=1, tries=20):
        """Random element, preferring ones used fewer than `cap` times."""
        if not pool:
            return None
        for _ in range(tries):
            x = self.rng.choice(pool)
            k = id(x) if not isinstance(x, str) else x
            if self.used[k] < cap:
                self.used[k] += 1
                return x
        return None

    # ---------------- passages ----------------
    def prose_passage(self, src, min_s=1, max_s=6):
        item = self.take(self.p.paras[src], cap=1)
        if not item:
            return None
        text = item[0]
        if "\n- " in text or text.startswith("- "):
            return text if len(text) <= 1200 else None
        sents = split_sentences(text)
        if len(sents) > max_s:
            k = self.rng.randint(max(min_s, 2), max_s)
            st = self.rng.randrange(0, len(sents) - k + 1)
            if st > 0 and re.match(r"^(This|These|It|They|However|But|Also|Thus|So|That)\b", sents[st]):
                st = 0
            sents = sents[st:st + k]
        text = " ".join(sents)
        if len(text) < 40 or len(text) > 1200:
            return None
        return text

    def long_passage(self, src):
        """60-350 words of consecutive paragraphs (with signatures and short code blocks) from one doc file,
        stopping at the next heading."""
        docs = self.p.docs[src]
        for _ in range(12):
            d = self.rng.choice(docs)
            if not d.items:
                continue
            target = self.rng.randint(60, 350)
            k0 = self.rng.randrange(len(d.items))
            while k0 < len(d.items) and d.items[k0][0] not in ("para", "sig"):
                k0 += 1
            if k0 >= len(d.items) or self.used[(d.path, k0)]:
                continue
            out, wc, sec = [], 0, d.items[k0][2]
            k = k0
            while k < len(d.items) and wc < target:
                it = d.items[k]
                kind = it[0]
                if kind == "heading":
                    break
                if kind == "para":
                    t = it[1]
                    if not good_prose(t) and not (t.startswith("- ") and letter_ratio(t) > 0.75):
                        if out:
                            break
                        k += 1
                        continue
                    w = words(t)
                elif kind == "sig":
                    t = it[1]
                    if len(t) > 120:
                        break
                    w = words(t)
                else:  # code
                    code = it[1]
                    if not out or code.count("\n") > 14 or len(code) > 700 or letter_ratio(code) < 0.4:
                        break
                    t = "\n".join("    " + l if l.strip() else "" for l in code.split("\n"))
                    w = words(code) // 2
                if wc + w > 350:
                    break
                out.append((kind, t))
                wc += w
                k += 1
            while out and (out[-1][0] == "sig" or (out[-1][0] == "para" and out[-1][1].endswith(":"))):
                wc -= words(out.pop()[1])
            if wc < 60 or sum(1 for x in out if x[0] == "para") == 0:
                continue
            self.used[(d.path, k0)] += 1
            text = "\n\n".join(t for _, t in out)
            if len(text) > 2200 or letter_ratio(text) < 0.7:
                continue
            if k0 > 0 and d.items[k0 - 1][0] == "heading" and sec and heading_ok(sec) and self.rng.random() < 0.6:
                text = sec + "\n\n" + text
            return text, sec
        return None

    def fortune(self, short=True):
        return self.take(self.p.fortunes_short if short else self.p.fortunes, cap=1)

    # ---------------- chat ----------------
    def chat(self):
        r = self.rng.random()
        if r < 0.14 and self.p.questions:
            item = self.take(self.p.questions, cap=1)
            if not item:
                return None
            src, q = item
            q = self.rng.choice(QUESTION_WRAPS).format(q=q)
            if src == "python" and "python" not in q.lower() and self.rng.random() < 0.5:
                q = q + (" (This is about Python.)" if self.rng.random() < 0.3 else "")
            return politeness(self.rng, q, CHAT_SUFFIXES, 0.1)
        if r < 0.45:
            src = "python" if self.rng.random() < 0.45 else "linux"
            if src == "python" and self.rng.random() < 0.2 and self.p.modules:
                m, d = self.rng.choice(self.p.modules)
                t = self.rng.choice(MODULE_TEMPLATES)
                return politeness(self.rng, t.format(m=m, d=lower_first(d.rstrip("."))), CHAT_SUFFIXES)
            h = self.take(self.p.headings[src], cap=2)
            if not h:
                return None
            t = self.rng.choice(HEADING_TEMPLATES)
            if t.startswith("What is") and (h.split()[0].endswith("ing") or h.split()[0].lower() in STOP):
                t = self.rng.choice(HEADING_TEMPLATES[1:])
            ctx = self.rng.choice(CTX[src])
            s = t.format(h=heading_phrase(h), ctx=ctx, role=self.rng.choice(ROLES[src]))
            s = s[0].upper() + s[1:]
            return politeness(self.rng, s, CHAT_SUFFIXES)
        if r < 0.75:
            f = self.fortune(short=True)
            if not f:
                return None
            if "\n" not in f and len(f) < 220 and self.rng.random() < 0.3:
                return politeness(self.rng, self.rng.choice(FORTUNE_INLINE).format(f=f), [], 0)
            instr = politeness(self.rng, self.rng.choice(FORTUNE_CHAT), CHAT_SUFFIXES, 0.15)
            return combine(self.rng, instr, f)
        if r < 0.88:
            q = self.take(EVERYDAY, cap=6)
        else:
            q = self.rng.choice(ACTIVITY_TEMPLATES).format(a=self.rng.choice(ACTIVITIES))
        if not q:
            return None
        if self.rng.random() < 0.2:
            q = self.rng.choice(["I'm a student. ", "I'm in my forties. ", "I live alone. ", "I have two kids. ",
                                 "I'm retired. ", "I'm on a tight budget. ", "I just moved. ", "I work night shifts. ",
                                 "I'm a total beginner. ", "I don't have much free time. "]) + q
        return politeness(self.rng, q, CHAT_SUFFIXES, 0.3)

    # ---------------- code ----------------
    def code(self):
        r = self.rng.random()
        if r < 0.4 and self.p.funcs:
            return self.code_from_func()
        if r < 0.55:
            t = self.take(CODE_TASKS, cap=12)
            if not t:
                return None
            t = self.rng.choice(CODE_PREFIXES) + t
            return politeness(self.rng, t, CODE_SUFFIXES, 0.35)
        if r < 0.85:
            code = self.take(self.p.code["python"], cap=1)
            if not code:
                return None
            instr = politeness(self.rng, self.rng.choice(CODE_BLOCK_TEMPLATES), EXPLAIN_SUFFIXES, 0.15)
            return combine(self.rng, instr, code, "code", "python")
        item = self.take(self.p.code["other"], cap=1)
        if not item:
            return None
        code, lang = item
        instr = politeness(self.rng, self.rng.choice(OTHER_CODE_TEMPLATES[lang]), EXPLAIN_SUFFIXES, 0.15)
        return combine(self.rng, instr, code, "code", "sh" if lang == "bash" and self.rng.random() < 0.3 else lang)

    def code_from_func(self):
        f = self.take(self.p.funcs, cap=2)
        if not f:
            return None
        kind, qual, name, args, first = f
        first = first.strip()
        if not first.endswith(".") or not (20 <= len(first) <= 220):
            return None
        w = first.split()[0]
        verb = base_verb(w)
        if not verb or name.startswith("_"):
            return None
        if re.search(r"\b(this|these|above|below|previous|following)\b", first, re.I) and self.rng.random() < 0.7:
            return None
        rest = first[len(w):-1]
        rest3 = re.sub(r"\b(and|or) ([a-z]+)\b",
                       lambda m: m.group(1) + " " + (third_person(m.group(2)) if m.group(2) in VERBS else m.group(2)), rest)
        base = verb + rest
        d3 = third_person(verb) + rest3
        args = collapse(args.replace("\\", ""))
        if len(args) > 60:
            args = "..."
        t = self.rng.choice(FUNC_TEMPLATES)
        lang = "Python"
        if "{lang}" in t:
            if PYTHONISH.search(first) or re.search(r"\(\)|\w_\w|\w\.\w", first):
                t = FUNC_TEMPLATES[0]
            else:
                lang = self.rng.choice(OTHER_LANGS)
        if kind not in PY_FUNC_DIRECTIVES and "`" in t:
            t = FUNC_TEMPLATES[0]
        s = t.format(d3=d3, db=base, name=name, args=args, qual=qual, lang=lang)
        return politeness(self.rng, s, CODE_SUFFIXES, 0.2)

    # ---------------- edit ----------------
    def edit(self):
        r = self.rng.random()
        if r < 0.42:
            src = "python" if self.rng.random() < 0.5 else "linux"
            text = self.prose_passage(src)
            if not text:
                return None
            t = self.rng.choice(EDIT_PROSE)
            if "grammar" in t.lower() or "proofread" in t.lower():
                text = typo_noise(self.rng, text)
            return combine(self.rng, politeness(self.rng, t, EDIT_SUFFIXES, 0.18), text)
        if r < 0.6:
            f = self.fortune(short=True)
            if not f:
                return None
            t = self.rng.choice(EDIT_FORTUNE + EDIT_PROSE[:12])
            if "grammar" in t.lower():
                f = typo_noise(self.rng, f)
            return combine(self.rng, politeness(self.rng, t, EDIT_SUFFIXES, 0.12), f)
        if r < 0.9:
            code = self.take(self.p.code["pyrun"], cap=2) if self.rng.random() < 0.75 else \
                self.take(self.p.code["python"], cap=2)
            if not code:
                return None
            t = self.rng.choice(EDIT_CODE)
            while "print" in t and "print(" not in code:
                t = self.rng.choice(EDIT_CODE)
            return combine(self.rng, politeness(self.rng, t, EDIT_SUFFIXES, 0.1), code, "code", "python")
        item = self.take(self.p.code["other"], cap=2)
        if not item:
            return None
        code, lang = item
        t = self.rng.choice(EDIT_OTHER_CODE[lang])
        return combine(self.rng, politeness(self.rng, t, EDIT_SUFFIXES, 0.1), code, "code", lang)

    # ---------------- summarise ----------------
    def summarise(self):
        r = self.rng.random()
        if r < 0.04:
            f = self.take(self.p.fortunes_long, cap=1)
            if not f:
                return None
            text, sec = f, None
        else:
            src = "python" if r < 0.52 else "linux"
            got = self.long_passage(src)
            if not got:
                return None
            text, sec = got
        t = self.rng.choice(SUMMARISE if sec is not None or r >= 0.04 else SUMMARISE_FORTUNE)
        n = self.rng.choice([1, 2, 2, 3, 3, 4, 5])
        q = None
        term = None
        if "{q}" in t or "{t}" in t:
            term = pick_term(self.rng, text)
            if not term:
                t = SUMMARISE[0]
            elif sec and heading_ok(sec) and self.rng.random() < 0.25 and "{q}" in t:
                q = self.rng.choice(["what does it say about {t}?", "what is the key idea of {t}?"]).format(t=lower_first(sec))
            else:
                q = self.rng.choice(QUESTION_FORMS).format(t=term)
        if q and (t.startswith("Answer") or t.startswith("Read")):
            q = q[0].upper() + q[1:]
        instr = t.format(n=n, q=q, t=term)
        if n == 1:
            instr = instr.replace("1 sentences", "one sentence").replace("1 bullet points", "one bullet point")
        return combine(self.rng, politeness(self.rng, instr, SUM_SUFFIXES, 0.15), text)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------

def norm_key(s):
    return re.sub(r"\W+", " ", s.lower()).strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/distill/data")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--linux-files", type=int, default=3000, help="at most this many linux-doc files are read")
    a = ap.parse_args()
    t0 = time.time()
    rng = random.Random(a.seed)
    sys.setrecursionlimit(5000)

    py_docs = load_python_docs(os.path.join(a.data, "python-doc"))
    lx_docs = load_linux_docs(os.path.join(a.data, "linux-doc"), a.linux_files, random.Random(a.seed + 1))
    fortunes = load_fortunes(os.path.join(a.data, "fortunes"))
    pools = Pools(py_docs, lx_docs, fortunes)
    print(f"corpus: {len(py_docs)} python-doc files, {len(lx_docs)} linux-doc files, {len(fortunes)} fortunes; "
          f"{len(pools.paras['python'])}+{len(pools.paras['linux'])} paragraphs, {len(pools.questions)} questions, "
          f"{len(pools.headings['python'])}+{len(pools.headings['linux'])} headings, {len(pools.funcs)} functions, "
          f"{len(pools.code['python'])} python ({len(pools.code['pyrun'])} runnable) + {len(pools.code['other'])} other code blocks "
          f"({time.time() - t0:.1f}s)", file=sys.stderr)

    gen = Gen(pools, rng)
    makers = {"chat": gen.chat, "code": gen.code, "edit": gen.edit, "summarise": gen.summarise}
    per = {c: a.n // 4 + (1 if i < a.n % 4 else 0) for i, c in enumerate(CATEGORIES)}
    seen = set()
    rows = []
    for cat in CATEGORIES:
        got, tries = 0, 0
        while got < per[cat] and tries < per[cat] * 30:
            tries += 1
            p = makers[cat]()
            if not p:
                continue
            p = p.strip()
            if len(p) > MAX_PROMPT:
                p = truncate(p, MAX_PROMPT)
                if p.count("```") % 2:
                    p += "\n```"
            if len(p) < 10:
                continue
            k = norm_key(p)
            if k in seen:
                continue
            seen.add(k)
            rows.append({"prompt": p, "category": cat})
            got += 1
        if got < per[cat]:
            print(f"warning: only {got} unique {cat} prompts (wanted {per[cat]})", file=sys.stderr)
    rng.shuffle(rows)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

    # summary
    counts = Counter(r["category"] for r in rows)
    lens = [len(r["prompt"]) for r in rows]
    print(f"wrote {len(rows)} prompts to {a.out} in {time.time() - t0:.1f}s")
    for c in CATEGORIES:
        cl = [len(r["prompt"]) for r in rows if r["category"] == c]
        print(f"  {c:10s} {counts[c]:6d}  mean {statistics.mean(cl) if cl else 0:7.1f} chars, "
              f"median {statistics.median(cl) if cl else 0:6.0f}")
    if lens:
        print(f"  all        {len(rows):6d}  mean {statistics.mean(lens):7.1f} chars, median {statistics.median(lens):6.0f}")
    srng = random.Random(a.seed + 7)
    for c in CATEGORIES:
        ex = [r["prompt"] for r in rows if r["category"] == c]
        print(f"\n=== {c}: 3 random examples ===")
        for p in srng.sample(ex, min(3, len(ex))):
            show = p if len(p) <= 400 else p[:400] + " [...]"
            print("---\n" + show)


if __name__ == "__main__":
    main()
