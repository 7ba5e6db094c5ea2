"""Card bodies from jinja2 templates, in a sandbox, failing loudly on anything undefined.

Templates may come from the user (--template-dir), so they run in jinja2's immutable sandbox (no
attribute escapes, no mutating the header they are shown);
values are passed as data and never re-parsed as template code, so `{{ }}` inside a dataset id
is printed, not executed. StrictUndefined turns a typo into an error naming template and line.
"""

from __future__ import annotations

import re
import traceback
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from hubtool.card.headings import demote_headings
from hubtool.errors import CardError

TEMPLATE_SUFFIX = ".md.j2"


def builtin_template_dir() -> Path:
    """The templates shipped with hubtool (hubtool/card_templates)."""
    return Path(str(resources.files("hubtool").joinpath("card_templates")))


def make_env(template_dir: Path | None = None) -> ImmutableSandboxedEnvironment:
    """User templates first, built-ins behind them, so a user can override one partial only."""
    dirs = [str(builtin_template_dir())]
    if template_dir is not None:
        template_dir = Path(template_dir)
        if not template_dir.is_dir():
            raise CardError(f"{template_dir}: template directory not found; pass a folder holding <kind>{TEMPLATE_SUFFIX} files")
        dirs.insert(0, str(template_dir))
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(dirs),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["human_size"] = human_size
    env.filters["md_cell"] = md_cell
    env.filters["fmt"] = fmt_number
    env.filters["code_block"] = code_block
    env.filters["repo_link"] = repo_link
    env.filters["demote_headings"] = demote_headings
    return env


def render_template(name: str, context: dict[str, Any], *, template_dir: Path | None = None) -> str:
    """Render NAME with CONTEXT; any template problem becomes a CardError naming template:line."""
    env = make_env(template_dir)
    try:
        template = env.get_template(name)
    except jinja2.TemplateNotFound as exc:
        raise CardError(f"{exc.name}: template not found in {template_dir or builtin_template_dir()}; add it or drop --template-dir") from None
    except jinja2.TemplateSyntaxError as exc:
        raise CardError(f"{exc.filename or exc.name}:{exc.lineno}: template syntax error: {exc.message}") from None
    try:
        return template.render(**context)
    except jinja2.TemplateSyntaxError as exc:  # raised while loading an included partial
        raise CardError(f"{exc.filename or exc.name}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        where = _template_location(exc)
        raise CardError(f"{where}: undefined variable: {exc.message}; define it in the release config / --set or fix the template") from None
    except SecurityError as exc:
        raise CardError(f"{_template_location(exc)}: template tried an unsafe operation ({exc}); templates may only read card data") from None
    except jinja2.TemplateError as exc:
        raise CardError(f"{_template_location(exc)}: template error: {exc}") from None
    except RecursionError as exc:
        where = _template_location(exc)
        where = str(template_dir or builtin_template_dir()) if where == "<template>" else where
        raise CardError(f"{where}: template recursion too deep (a macro or include that calls itself?); give it a stopping condition") from None


def _template_location(exc: BaseException) -> str:
    """`path/to/template.md.j2:LINE` of the innermost template frame in the traceback."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(".j2") or frame.filename.endswith(".jinja"):
            return f"{frame.filename}:{frame.lineno}"
    return "<template>"


def human_size(num: Any) -> str:
    """Bytes as '1.23 GB' (decimal units, as the Hub shows file sizes)."""
    if num is None:
        return "-"
    num = float(num)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(num) < 1000 or unit == "TB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.2f} {unit}"
        num /= 1000
    return f"{num:.2f} TB"


def md_cell(value: Any) -> str:
    """A value safe inside a Markdown table cell: one line, pipes escaped."""
    if value is None:
        return "-"
    text = " ".join(str(value).split())
    return text.replace("|", "\\|") or "-"


def fmt_number(value: Any, digits: int = 4) -> str:
    """Numbers with DIGITS significant digits; '-' for missing values."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return md_cell(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def code_block(text: Any, lang: str = "") -> str:
    """A fenced block that the text cannot close early (fence longer than any backtick run in it)."""
    text = str(text).rstrip("\n")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def repo_link(repo_id: Any, hub_url: str = "https://huggingface.co") -> str:
    """Markdown link to a Hub repo (on HUB_URL: a card rendered for a local Hub links to that Hub)."""
    return f"[{repo_id}]({str(hub_url).rstrip('/')}/{repo_id})"
