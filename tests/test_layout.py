"""The package's shape follows the data flow: lower layers never import the CLI, and the merge
lives in one package (hubtool/merge/), not in flat modules beside it."""

import ast
import re
import subprocess
import sys
import warnings
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hubtool"


def _imported_modules(source: str, package: str) -> set[str]:
    """Absolute module names SOURCE imports (relative imports resolved against PACKAGE)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from hubtool import cli`
    return names


def test_no_module_below_cli_imports_cli():
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        if path.relative_to(PKG).parts[0] == "cli" or path.name == "__main__.py":  # entry points sit above cli/
            continue
        package = ".".join(path.relative_to(PKG.parent).parts[:-1])
        bad = sorted(m for m in _imported_modules(path.read_text(encoding="utf-8"), package)
                     if m == "hubtool.cli" or m.startswith("hubtool.cli."))
        if bad:
            offenders.append(f"{path.relative_to(PKG.parent)}: {', '.join(bad)}")
    assert not offenders, "modules below cli/ import it:\n" + "\n".join(offenders)


def test_checker_sees_cli_imports():
    """The walk above catches absolute, relative and function-local imports of the CLI."""
    source = "def f():\n    from hubtool.cli.release_cmd import quality_table\nfrom ..cli import gates\nimport hubtool.cli\n"
    assert {"hubtool.cli.release_cmd", "hubtool.cli", "hubtool.cli.gates"} <= _imported_modules(source, "hubtool.gguf")
    assert "hubtool.quality.table" in _imported_modules((PKG / "demo.py").read_text(encoding="utf-8"), "hubtool")


def test_merge_is_one_package():
    assert (PKG / "merge" / "__init__.py").is_file()
    for old in ("merge.py", "adapter.py", "rope.py", "shard_writer.py"):
        assert not (PKG / old).exists(), f"hubtool/{old} is back; it lives in hubtool/merge/"
    for mod in ("apply", "adapter", "rope", "shard_writer"):
        assert (PKG / "merge" / f"{mod}.py").is_file()


def test_quality_table_lives_below_cli():
    """`hubtool release` and the demo print the same table, from hubtool/quality/table.py."""
    from hubtool.cli import release_cmd
    from hubtool.quality.table import quality_table

    assert release_cmd.quality_table is quality_table
    table = quality_table([{"variant": "Q4_K_M", "kind": "gguf", "size_bytes": 2_500_000, "perplexity": 11.0,
                            "ref_perplexity": 10.0, "kl_div": 0.03125, "top1": 0.9}])
    assert table.splitlines()[2].split() == ["Q4_K_M", "gguf", "2.5", "11.000", "10.000", "+10.0", "0.0312", "0.900"]


QUALITY_MODULES = ("texts", "reference", "stream", "in_memory", "metrics", "results", "gates", "table", "sensitivity")
OLD_QUALITY_PATHS = re.compile(r"hubtool[./](quality_gates|quality_table|evaluate)\b|hubtool/quality\.py")


def _project_files(*suffixes: str) -> list[Path]:
    root = PKG.parent
    files = [p for d in ("hubtool", "tests", "bench", "scripts", "examples", "docs") for p in (root / d).rglob("*")]
    files = [p for p in files + [root / "README.md"] if p.suffix in suffixes]
    return sorted(p for p in files if p.is_file() and p != Path(__file__).resolve())


def test_quality_is_one_package():
    """Everything measured lives in hubtool/quality/ (issue 18): the flat modules and hubtool/evaluate/ are gone."""
    for old in ("quality.py", "quality_gates.py", "quality_table.py", "evaluate"):
        assert not (PKG / old).exists(), f"hubtool/{old} is back; it lives in hubtool/quality/"
    for mod in QUALITY_MODULES:
        assert (PKG / "quality" / f"{mod}.py").is_file()


def test_nothing_uses_old_quality_paths():
    """No import (absolute, relative or function-local) names a module that moved into hubtool/quality/,
    and no code string, doc or template mentions one (`python -c` snippets, monkeypatch targets)."""
    offenders = []
    for path in _project_files(".py"):
        package = ".".join(path.relative_to(PKG.parent).parts[:-1])
        with warnings.catch_warnings():  # parsing, not running: another file's escape warnings are not this test's
            warnings.simplefilter("ignore")
            modules = _imported_modules(path.read_text(encoding="utf-8"), package)
        for m in modules:
            parts = m.split(".")
            if parts[:2] == ["hubtool", "quality"] and len(parts) > 2 and parts[2] not in QUALITY_MODULES:
                offenders.append(f"{path.relative_to(PKG.parent)}: {m} (import it from its hubtool.quality submodule)")
    for path in _project_files(".py", ".md", ".j2", ".yml", ".yaml", ".sh"):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if OLD_QUALITY_PATHS.search(line):
                offenders.append(f"{path.relative_to(PKG.parent)}:{i}: {line.strip()}")
    assert not offenders, "old quality module paths in use:\n" + "\n".join(offenders)


def test_checker_sees_old_quality_imports():
    """The checks above catch a flat-module name imported from the package and an old path in a string."""
    assert "hubtool.quality.compare_logits" in _imported_modules("from hubtool.quality import compare_logits\n", "hubtool")
    assert "hubtool.quality.gates" in _imported_modules("def f():\n    from ..quality import gates\n", "hubtool.cli")
    assert OLD_QUALITY_PATHS.search('code = "from hubtool.evaluate.reference import open_reference"')
    assert not OLD_QUALITY_PATHS.search("from hubtool.quality.reference import open_reference  # bench/evaluate.py")


def test_quality_package_import_is_light():
    """Card and CLI code read results, gates and tables without loading numpy or torch."""
    code = ("import sys, hubtool.quality, hubtool.quality.texts, hubtool.quality.results, hubtool.quality.gates, "
            "hubtool.quality.table; print(sorted({'numpy', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]", out
