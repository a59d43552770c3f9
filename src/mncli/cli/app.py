"""The `mncli` root command. Each subcommand lives in its own module `cli/cmd_<name>.py` with a
`register(app)` function; torch is imported inside the commands so `mncli --help` stays instant."""

from __future__ import annotations

import atexit
import functools
import importlib
import inspect
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape  # error messages are text: "mncli[onnx]" is not a markup tag

# Typer 0.26 (pinned in pyproject) carries its own copy of click: its exceptions are these.
from typer._click.exceptions import Abort, ClickException, NoArgsIsHelpError

from mncli.cli.options import OUTPUT
from mncli.errors import BadInput, MncliError
from mncli.log import is_quiet, is_verbose, set_verbosity
from mncli.log import stderr as log_stderr
from mncli.version import __version__

app = typer.Typer(
    name="mncli",
    help=(
        "Turn neural networks into tiny ones and score them by the MicroNet Challenge rules.\n\n"
        "Every stage reads and writes one .safetensors artifact with a JSON manifest:\n\n"
        "  mncli train --arch resnet20 --dataset fashion-mnist -o fp.safetensors\n\n"
        "  mncli prune fp.safetensors --sparsity 0.8 --dataset fashion-mnist -o p.safetensors\n\n"
        "  mncli score p.safetensors"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# Order is the order of `mncli --help`.
COMMANDS = [
    "models",
    "inspect",
    "verify",
    "import",
    "export",
    "train",
    "eval",
    "score",
    "prune",
    "ternarize",
    "quantize",
    "search",
    "scale",
    "report",
]


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"mncli {__version__}\n")
        raise typer.Exit()


Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Show tracebacks and debug logs.")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="Print only the output path; no logs.")]
VerboseAfter = Annotated[
    bool, typer.Option("-v", "--verbose", help="Show tracebacks and debug logs.", rich_help_panel=OUTPUT)
]
QuietAfter = Annotated[
    bool, typer.Option("-q", "--quiet", help="Print only the output path; no logs.", rich_help_panel=OUTPUT)
]


@app.callback()
def root(
    verbose: Verbose = False,
    quiet: Quiet = False,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show version."),
) -> None:
    set_verbosity(verbose=verbose, quiet=quiet)


NoClobber = Annotated[
    bool,
    typer.Option(
        "-n", "--no-clobber", help="Keep an existing OUTPUT: stop (exit 2) instead.", rich_help_panel=OUTPUT
    ),
]


def _with_common_options(command: Callable) -> Callable:
    """The command with the options every command shares: -v/-q (so they work after the subcommand
    as well as before it) and, on a command that writes OUTPUT (`-o`), -n/--no-clobber as cp has it."""
    signature = inspect.signature(command, eval_str=True)
    writes = "out" in signature.parameters
    added = [
        inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, annotation=VerboseAfter, default=False),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=QuietAfter, default=False),
    ]
    if writes:
        added.append(
            inspect.Parameter(
                "no_clobber", inspect.Parameter.KEYWORD_ONLY, annotation=NoClobber, default=False
            )
        )

    @functools.wraps(command)
    def wrapper(
        *args: Any, verbose: bool = False, quiet: bool = False, no_clobber: bool = False, **kwargs: Any
    ) -> Any:
        if verbose or quiet:
            set_verbosity(verbose=verbose or is_verbose(), quiet=quiet or is_quiet())
        if no_clobber and kwargs["out"].exists():
            raise BadInput(f"{kwargs['out']} exists and --no-clobber keeps it", hint="drop -n to replace it")
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *added])
    return wrapper


for _name in COMMANDS:
    importlib.import_module(f"mncli.cli.cmd_{_name}").register(app)
for _info in app.registered_commands:
    _info.callback = _with_common_options(_info.callback)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; turn every error into one line on stderr and an exit code: 2 for bad input
    (usage errors included), 1 for a runtime failure, 130/143 for a stop on a signal."""
    previous = _stop_on_signals()
    try:
        result = app(args=argv, prog_name="mncli", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Abort:  # Ctrl-C while Typer was still reading the command line
        _say("interrupted")
        return 130
    except NoArgsIsHelpError as exc:  # `mncli` or `mncli CMD` alone: the help, as a usage error
        exc.show()
        return exc.exit_code
    except ClickException as exc:  # a usage error: unknown option, bad value, missing argument
        command = exc.ctx.command_path if getattr(exc, "ctx", None) else "mncli"
        _say(f"[red]error:[/red] {exc.format_message()}", f"see `{command} --help`")
        return exc.exit_code
    except MncliError as exc:
        if is_verbose():
            traceback.print_exc()
        interrupted = exc.exit_code in (130, 143)  # a clean stop on a signal is not an error
        message, hint = escape(exc.message), escape(exc.hint) if exc.hint else None
        _say(message if interrupted else f"[red]error:[/red] {message}", hint)
        return exc.exit_code
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except _Stopped as exc:  # SIGINT/SIGTERM outside training (which saves a checkpoint and says so)
        _say(f"interrupted by {signal.Signals(exc.signum).name}; no output was written")
        return 128 + exc.signum
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if is_verbose():
            traceback.print_exc()
        else:
            _say(f"[red]error:[/red] unexpected {type(exc).__name__}: {exc}", "run with -v for the traceback")
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


class _Stopped(BaseException):
    """SIGINT or SIGTERM: a BaseException, so no `except Exception` swallows it; files being
    written are removed on the way out (their writers clean up on BaseException)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame) -> None:
    raise _Stopped(signum)


def _stop_on_signals() -> dict:
    """SIGINT and SIGTERM raise _Stopped (the training loop installs its own meanwhile); the
    handlers they replaced, to put back. Only the main thread can set handlers."""
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, _raise_stopped)
        except ValueError:
            pass
    return previous


def _say(message: str, hint: str | None = None) -> None:
    """One line on stderr: the message, and the hint in brackets."""
    text = f"{message} (hint: {hint})" if hint else message
    log_stderr.print(" ".join(text.split()), highlight=False)


def entry() -> None:
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker has left its process group; gloo's threads can still abort the process
        # in C++ teardown ("terminate called without an active exception", seen in ~3 % of busy
        # 2-process runs after all work was done). Everything is written: run the Python exit
        # handlers, flush, and leave without the C++ teardown.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
