"""The package's shape follows the data flow: lower layers never import the CLI, and the merge
lives in one package (hubtool/merge/), not in flat modules beside it."""

import ast
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
    assert "hubtool.quality_table" in _imported_modules((PKG / "demo.py").read_text(encoding="utf-8"), "hubtool")


def test_merge_is_one_package():
    assert (PKG / "merge" / "__init__.py").is_file()
    for old in ("merge.py", "adapter.py", "rope.py", "shard_writer.py"):
        assert not (PKG / old).exists(), f"hubtool/{old} is back; it lives in hubtool/merge/"
    for mod in ("apply", "adapter", "rope", "shard_writer"):
        assert (PKG / "merge" / f"{mod}.py").is_file()


def test_quality_table_lives_below_cli():
    """`hubtool release` and the demo print the same table, from hubtool/quality_table.py."""
    from hubtool.cli import release_cmd
    from hubtool.quality_table import quality_table

    assert release_cmd.quality_table is quality_table
    table = quality_table([{"variant": "Q4_K_M", "kind": "gguf", "size_bytes": 2_500_000, "perplexity": 11.0,
                            "ref_perplexity": 10.0, "kl_div": 0.03125, "top1": 0.9}])
    assert table.splitlines()[2].split() == ["Q4_K_M", "gguf", "2.5", "11.000", "10.000", "+10.0", "0.0312", "0.900"]
