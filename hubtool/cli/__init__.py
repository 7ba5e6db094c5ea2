"""Command line: `hubtool <command>`. Each command lives in its own module here."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading

from hubtool import __version__
from hubtool.errors import HubtoolError, Interrupted, describe_os_error

# One module per command; each defines `register(subparsers)` which sets `func` on its parser.
COMMANDS = [
    "hubtool.cli.merge_cmd",
    "hubtool.cli.gptq_cmd",
    "hubtool.cli.gguf_cmd",
    "hubtool.cli.card_cmd",
    "hubtool.cli.push_cmd",
    "hubtool.cli.hub_cmd",
    "hubtool.cli.release_cmd",
    "hubtool.cli.demo_cmd",
]


_GROUPS: dict[str, argparse._SubParsersAction] = {}


def subgroup(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """A nested command group (`hubtool quantize gguf`, `hubtool verify gptq`) shared by several modules."""
    if name not in _GROUPS:
        parser = sub.add_parser(name, help=help)
        _GROUPS[name] = parser.add_subparsers(dest=f"{name}_command", required=True, metavar="KIND")
    return _GROUPS[name]


def build_parser() -> argparse.ArgumentParser:
    _GROUPS.clear()
    parser = argparse.ArgumentParser(
        prog="hubtool",
        description="From training output to a finished Hugging Face Hub release: merge, quantize (GPTQ, GGUF), verify, cards, push.",
    )
    parser.add_argument("--version", action="version", version=f"hubtool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    _add_verbose(parser)
    return parser


def command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The innermost (sub)command parser ARGV names (`release`, `quantize gguf`), for its usage in errors."""
    for token in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if token in subs[0].choices:
            parser = subs[0].choices[token]
    return parser


VERBOSE_HELP = "also show the libraries' own logs, warnings and progress bars"


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """Every command takes --verbose: without it, library chatter stays out of the user's way."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        if "--verbose" not in parser._option_string_actions:
            parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
        return
    for child in subs[0].choices.values():
        _add_verbose(child)


_RECEIVED: list[int] = []  # signals received during this main(): an exception a C extension made of ours still means "stopped"


def _raise_interrupted(signum: int, frame: object) -> None:
    _RECEIVED.append(signum)
    raise Interrupted(signum)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    _RECEIVED.append(signum)
    raise KeyboardInterrupt


def _install_signal_handlers() -> dict[int, object]:
    """Ctrl-C raises KeyboardInterrupt; SIGTERM (CI runners, `timeout`) and SIGHUP (closed terminal)
    raise Interrupted, a KeyboardInterrupt, so every staged output's cleanup runs for all three.
    Returns the previous handlers, restored when main() returns (tests call main() in-process)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig, handler in ((signal.SIGINT, _raise_keyboard_interrupt), (signal.SIGTERM, _raise_interrupted),
                         (getattr(signal, "SIGHUP", None), _raise_interrupted)):
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    return previous


def main(argv: list[str] | None = None) -> int:
    previous: dict[int, object] = {}
    _RECEIVED.clear()
    try:
        previous = _install_signal_handlers()
        # Libraries we load (gptqmodel) turn on INFO logging globally; one line per HTTP request drowns
        # hubtool's own progress lines, so the HTTP clients' loggers stay at WARNING.
        for name in ("httpx", "httpx2", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # say it with the (sub)command's own usage, not the top-level one
            command_parser(parser, sys.argv[1:] if argv is None else argv).error(f"unrecognized arguments: {' '.join(unknown)}")
        if args.command == "hub":  # a long-running server: its --verbose logs requests
            return int(args.func(args) or 0)
        from hubtool.progress import quiet_libraries

        with quiet_libraries(getattr(args, "verbose", False)):
            return int(args.func(args) or 0)
    except HubtoolError as exc:
        return _fail(str(exc), exc.exit_code)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        return _fail(f"stopped by {name}; outputs were not written, temp files were removed (re-run to resume)", 128 + exc.signum)
    except KeyboardInterrupt:
        return _fail("interrupted; outputs were not written (re-run to resume)", 130)
    # The last line of defence: failures of the machine or of a file we read without a dedicated
    # check still end as one line naming the file, not a traceback.
    except OSError as exc:
        return _fail(describe_os_error(exc), 2)
    except UnicodeDecodeError as exc:
        return _fail(f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8", 2)
    except RecursionError:
        return _fail("an input is nested too deeply (a recursive YAML alias or template macro?); simplify it", 2)
    except Exception:
        # A signal that arrived inside a C extension (safetensors, torch) can come back as that library's
        # own error (e.g. a ValueError): it is still the signal, and the staged outputs were cleaned up.
        if not _RECEIVED:
            raise
        signum = _RECEIVED[-1]
        if signum == signal.SIGINT:
            return _fail("interrupted; outputs were not written (re-run to resume)", 130)
        return _fail(f"stopped by {signal.Signals(signum).name}; outputs were not written, temp files were removed (re-run to resume)",
                     128 + signum)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def _fail(message: str, code: int) -> int:
    from hubtool.push import scrub

    print(f"error: {scrub(message, None)}", file=sys.stderr)
    return code
