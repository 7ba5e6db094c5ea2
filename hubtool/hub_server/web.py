"""HTML pages of the local Hub at the Hub's own web paths, so a release can be looked at before it is real.

    /                              repo index
    /{ns}/{name}                   model card (rendered) + metadata, files of main, branches, tags
    /{ns}/{name}/tree/{rev}[/dir]  the same at a branch, tag or commit
    /{ns}/{name}/blob/{rev}/{path} one file: size, hashes, LFS/Xet, text content when small
    /{ns}/{name}/commits/{rev}     history

Cards are untrusted text: markdown is rendered by markdown-it-py with raw HTML disabled (it is shown
escaped) and its default link validation (no javascript: URLs); every other value is HTML-escaped;
and pages are sent with a Content-Security-Policy that allows no script at all.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any
from urllib.parse import quote

from hubtool.hub_server.storage import RepoRef, StorageError

# markdown-it's inline parser costs tens of microseconds per bracket/emphasis mark, and more on
# adversarial runs (240 kB of '[' took 10 s a view): larger cards, or ones with more marks than any
# real card, are not rendered but linked raw, which keeps every page view bounded.
MAX_RENDER_BYTES = 200_000
MAX_RENDER_MARKS = 8_000
_MARKS = re.compile(r"[\[\]!*_<>`()~|\\]")
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
MAX_TEXT_BYTES = 256_000
_COMMENT = re.compile(r"<!--.*?-->", re.S)
# Header fields shown as metadata chips, in this order; others go to the "other metadata" table.
CHIP_KEYS = ("license", "license_name", "base_model", "base_model_relation", "pipeline_tag", "library_name", "language", "datasets", "tags")

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111827;background:#fff}
header.top{background:#f9fafb;border-bottom:1px solid #e5e7eb;padding:10px 24px}
header.top a{color:#111827;text-decoration:none;font-weight:600}
main{max-width:1100px;margin:0 auto;padding:16px 24px}
h1.repo{font-size:1.4em;margin:8px 0}
.chips span{display:inline-block;border:1px solid #e5e7eb;border-radius:6px;padding:2px 8px;margin:2px 4px 2px 0;font-size:.85em;background:#f9fafb}
nav.tabs a{margin-right:16px}
table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;font-size:.9em;vertical-align:top}
.badge{font-size:.75em;border-radius:4px;padding:1px 5px;margin-left:6px;background:#eef2ff;border:1px solid #c7d2fe}
article.card{border:1px solid #e5e7eb;border-radius:8px;padding:8px 24px;margin:12px 0}
pre{background:#f3f4f6;padding:8px;overflow:auto}
code{background:#f3f4f6}
.muted{color:#6b7280;font-size:.85em}
"""


def is_page(method: str, segs: list[str]) -> bool:
    """True for the Hub's web paths (GET/HEAD only); everything else stays with the API router."""
    if method not in ("GET", "HEAD") or not segs:
        return False
    if segs == [""]:
        return True
    if len(segs) == 3 and segs[0] == "collections" and all(segs):
        return True
    if len(segs) == 2 and all(segs):
        return True
    return len(segs) >= 4 and segs[2] in ("tree", "blob", "commits")


def serve_page(handler: Any, segs: list[str]) -> None:
    """Answer one web path on HANDLER (a HubHandler): a page, or an HTML 404."""
    storage = handler.hub.storage
    try:
        if segs == [""]:
            status, body = 200, _index(handler)
        elif segs[0] == "collections":
            from hubtool.hub_server.collections_api import page

            status, body = 200, page(handler, f"{segs[1]}/{segs[2]}")
        else:
            ref = storage.canonical(RepoRef("model", f"{segs[0]}/{segs[1]}"))
            handler._require_read(ref)  # private repos stay private on the web too
            view = segs[2] if len(segs) > 2 else "tree"
            rev = segs[3] if len(segs) > 3 else "main"
            rest = "/".join(segs[4:])
            if view == "tree":
                body = _repo_page(storage, ref, rev, rest)
            elif view == "blob":
                body = _blob_page(storage, ref, rev, rest)
            else:
                body = _commits_page(storage, ref, rev)
            status = 200
    except StorageError as exc:
        status, body = exc.status, _layout("Not found", f"<h1>{exc.status}</h1><p>{_e(str(exc))}</p>")
    handler._send(status, body.encode("utf-8"), {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
                  ctype="text/html; charset=utf-8")


# ---------------------------------------------------------------------- pages
def _index(handler: Any) -> str:
    root = handler.hub.storage.root / "repos" / "model"
    rows = []
    for meta_path in sorted(root.glob("*/*/repo.json")):
        repo_id = f"{meta_path.parent.parent.name}/{meta_path.parent.name}"
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if meta.get("private") and handler.hub.users is not None:
            continue
        rows.append(f"<tr><td><a href='{_u('/' + repo_id)}'>{_e(repo_id)}</a></td><td>{'private' if meta.get('private') else 'public'}</td></tr>")
    table = "<table><tr><th>Repository</th><th>Visibility</th></tr>" + "".join(rows) + "</table>" if rows else "<p>No repositories yet.</p>"
    return _layout("Local Hub", f"<h1>Models</h1>{table}")


def _repo_page(storage: Any, ref: RepoRef, rev: str, folder: str) -> str:
    commit_id, files = storage.files_at(ref, rev)
    refs = storage.refs(ref)
    card_html, meta_html, title = "", "", ref.repo_id
    readme = files.get("README.md")
    if readme is not None and not folder:
        text = _read_text(storage, readme)
        if text is not None:
            meta, body = _split(text)
            meta_html = _metadata(meta)
            raw = _u(f"/{ref.repo_id}/resolve/{commit_id}/README.md")
            if len(body) > MAX_RENDER_BYTES or len(_MARKS.findall(body, 0, MAX_RENDER_BYTES)) > MAX_RENDER_MARKS:
                card_html = (f"<article class='card'><p class='muted' id='card-too-large'>This card is too large to render here "
                             f"({len(body)} characters): <a href='{raw}'>view raw</a>.</p></article>")
            else:
                card_html = f"<article class='card'>{render_markdown(body)}</article>"
    prefix = folder.strip("/") + "/" if folder.strip("/") else ""
    listed = {p: e for p, e in files.items() if p.startswith(prefix)}
    if prefix and not listed:
        raise StorageError(404, "EntryNotFound", f"{folder} does not exist on {rev}")
    body = (
        _repo_header(ref, rev, commit_id)
        + meta_html
        + _refs_html(ref, refs, rev)
        + _files_html(ref, rev, listed, prefix)
        + card_html
    )
    return _layout(title, body)


def _blob_page(storage: Any, ref: RepoRef, rev: str, path: str) -> str:
    commit_id, files = storage.files_at(ref, rev)
    entry = files.get(path)
    if entry is None:
        raise StorageError(404, "EntryNotFound", f"{path} does not exist on {rev}")
    rows = [("Path", _e(path)), ("Size", f"{_size(entry['size'])} ({entry['size']} bytes)"), ("Storage", _marks(entry) or "git"),
            ("sha256", f"<code>{_e(entry.get('sha256', ''))}</code>"), ("git oid", f"<code>{_e(entry.get('oid', ''))}</code>")]
    info = "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    download = f"<p><a href='{_u(f'/{ref.repo_id}/resolve/{rev}/{path}')}'>download</a></p>"
    content = ""
    if not entry.get("lfs") and entry["size"] <= MAX_TEXT_BYTES:
        text = _read_text(storage, entry)
        content = f"<pre>{_e(text)}</pre>" if text is not None else "<p class='muted'>binary file</p>"
    return _layout(f"{path} · {ref.repo_id}", _repo_header(ref, rev, commit_id) + f"<h2>{_e(path)}</h2>" + info + download + content)


def _commits_page(storage: Any, ref: RepoRef, rev: str) -> str:
    history = storage.history(ref, rev)
    rows = "".join(
        f"<tr><td><a href='{_u('/' + ref.repo_id + '/tree/' + c['id'])}'><code>{_e(c['id'][:8])}</code></a></td>"
        f"<td>{_e(c.get('title', ''))}</td><td>{_e(c.get('author', ''))}</td><td>{_e(c.get('date', ''))}</td></tr>"
        for c in history
    )
    table = f"<table><tr><th>Commit</th><th>Title</th><th>Author</th><th>Date</th></tr>{rows}</table>"
    return _layout(f"Commits · {ref.repo_id}", _repo_header(ref, rev, history[0]["id"] if history else "") + f"<h2>Commits on {_e(rev)}</h2>" + table)


# ---------------------------------------------------------------------- parts
def render_markdown(text: str) -> str:
    """The Hub's markdown flavour as far as a card needs it: CommonMark + GFM tables and strikethrough.

    Raw HTML in the card is escaped, not passed through (html=False), so no script from a card runs.
    """
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(["table", "strikethrough"])
    return md.render(_COMMENT.sub("", text))  # HTML comments are hidden on the Hub; removing them adds nothing


def _split(text: str) -> tuple[dict[str, Any], str]:
    from hubtool.errors import CardError
    from hubtool.frontmatter import split_front_matter

    try:
        return split_front_matter(text)
    except CardError as exc:  # a broken header is shown as a note, and the text as it is
        return {"_error": str(exc)}, text


def _metadata(meta: dict[str, Any]) -> str:
    if not meta:
        return ""
    if "_error" in meta:
        return f"<p class='muted'>metadata: {_e(meta['_error'])}</p>"
    chips = []
    for key in CHIP_KEYS:
        value = meta.get(key)
        for item in value if isinstance(value, list) else ([value] if value not in (None, "") else []):
            chips.append(f"<span data-key='{_e(key)}'>{_e(key)}: {_e(item)}</span>")
    out = f"<div class='chips' id='metadata'>{''.join(chips)}</div>"
    # The header is untrusted YAML: any field may be any type (a string where a list belongs, a
    # date, binary, a set). What does not have the model-index shape is skipped, never a 500.
    rows = []
    for entry in _dicts(meta.get("model-index")):
        for result in _dicts(entry.get("results")):
            dataset = result.get("dataset")
            name = dataset.get("name", "") if isinstance(dataset, dict) else ""
            for metric in _dicts(result.get("metrics")):
                rows.append(f"<tr><td>{_e(metric.get('name') or metric.get('type'))}</td><td>{_e(metric.get('value'))}</td><td>{_e(name)}</td></tr>")
    if rows:
        out += f"<h3>Evaluation results</h3><table id='eval-results'><tr><th>Metric</th><th>Value</th><th>Dataset</th></tr>{''.join(rows)}</table>"
    other = {k: v for k, v in meta.items() if k not in CHIP_KEYS and k != "model-index"}
    if other:
        out += "<details><summary>Other metadata</summary><table>" + "".join(
            f"<tr><th>{_e(k)}</th><td><pre>{_e(_shown(v))}</pre></td></tr>"
            for k, v in other.items()
        ) + "</table></details>"
    return out


def _shown(value: Any) -> str:
    """A header value as text: JSON where it is JSON-like, else Python's own text (dates, sets, bytes, cycles)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        return str(value)[:10_000]


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The dict items of VALUE if it is a list (anything else in a header is ignored here)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _repo_header(ref: RepoRef, rev: str, commit_id: str) -> str:
    base = "/" + ref.repo_id
    tabs = (f"<nav class='tabs'><a href='{_u(base)}'>Model card</a><a href='{_u(f'{base}/tree/{rev}')}'>Files</a>"
            f"<a href='{_u(f'{base}/commits/{rev}')}'>Commits</a></nav>")
    return f"<h1 class='repo'>{_e(ref.repo_id)}</h1><p class='muted'>revision {_e(rev)} · commit <code>{_e(commit_id[:12])}</code></p>{tabs}"


def _refs_html(ref: RepoRef, refs: dict[str, dict[str, str]], rev: str) -> str:
    def links(kind: str) -> str:
        items = sorted((refs.get(kind) or {}).items())
        return ", ".join(
            f"<a href='{_u(f'/{ref.repo_id}/tree/{name}')}'>{'<b>' if name == rev else ''}{_e(name)}{'</b>' if name == rev else ''}</a>"
            f" <code class='muted'>{_e(sha[:8])}</code>" for name, sha in items
        ) or "<span class='muted'>none</span>"

    return f"<p id='branches'>Branches: {links('branches')}</p><p id='tags'>Tags: {links('tags')}</p>"


def _files_html(ref: RepoRef, rev: str, files: dict[str, dict[str, Any]], prefix: str) -> str:
    rows = []
    for path in sorted(files):
        entry = files[path]
        rows.append(f"<tr><td><a href='{_u(f'/{ref.repo_id}/blob/{rev}/{path}')}'>{_e(path[len(prefix):])}</a>{_marks(entry)}</td>"
                    f"<td data-bytes='{int(entry['size'])}'>{_size(entry['size'])}</td></tr>")
    total = sum(int(e["size"]) for e in files.values())
    return (f"<h2>Files <span class='muted'>({len(files)}, {_size(total)})</span></h2>"
            f"<table id='files'><tr><th>File</th><th>Size</th></tr>{''.join(rows)}</table>")


def _marks(entry: dict[str, Any]) -> str:
    marks = []
    if entry.get("lfs"):
        marks.append("<span class='badge' title='stored with Git LFS'>LFS</span>")
    if entry.get("xet"):
        marks.append("<span class='badge' title='stored with Xet'>Xet</span>")
    return "".join(marks)


def _read_text(storage: Any, entry: dict[str, Any]) -> str | None:
    if entry["size"] > MAX_TEXT_BYTES:
        return None
    data = storage.open_blob(entry).read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def _size(num: Any) -> str:
    num = float(num)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if num < 1000 or unit == "TB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1000
    return f"{num:.1f} TB"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _u(path: str) -> str:
    """A same-site URL for PATH, percent-encoded (and then attribute-escaped)."""
    return _e(quote(path, safe="/"))


def _layout(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)} · local Hub</title><style>{STYLE}</style></head>"
        f"<body><header class='top'><a href='/'>local Hub</a></header><main>{body}</main></body></html>"
    )
