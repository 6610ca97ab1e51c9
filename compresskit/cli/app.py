"""The typer app: its --version callback, bad input as one line on stderr (click's own usage
errors and `CompresskitError` alike), and `main`. The commands are registered on it by the
package (`compresskit/cli/__init__.py`)."""

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import typer
from typer.core import TyperGroup

try:  # recent typer vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # older typer depends on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from rich.markup import escape

from compresskit.cli.flags import flag_of
from compresskit.cli.render import err_console
from compresskit.errors import CompresskitError, ParameterError


def _version(value: bool) -> None:
    if value:
        from compresskit import __version__

        typer.echo(f"compresskit {__version__}")
        raise typer.Exit()


class _OneLineUsageErrors(TyperGroup):
    """click's own errors (an unknown choice, a missing value) as one line on stderr, ``error: …``,
    with exit code 2, like every other bad input; click would print a usage block first."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except UsageError as exc:
            err_console.print(
                f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False, soft_wrap=True
            )
            sys.exit(2)
        except ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    rich_markup_mode=None,  # click's plain help wraps at any width and never cuts a flag or its choices
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Train VGG-family CNNs on small image sets, look inside them layer by layer, shrink them.",
)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train VGG-family CNNs on small image sets, look inside them layer by layer, shrink them."""


@contextmanager
def user_errors(trust_factory: bool = False, flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn a `CompresskitError` into one line on stderr and its exit code (2; 130 for a run
    stopped by a signal); a `ParameterError` names flags, not parameters (`cli.flags.flag_of`, with
    this command's own `flags` first). With `trust_factory` (--trust-factory), build whatever model
    factory the runs read inside the block record."""
    from compresskit.architecture import trusting_recorded_factories

    try:
        with trusting_recorded_factories(trust_factory):
            yield
    except CompresskitError as exc:
        code = getattr(exc, "exit_code", 2)
        label = "stopped" if code == 130 else "error"
        text = exc.spelled(lambda name: flag_of(name, flags)) if isinstance(exc, ParameterError) else str(exc)
        err_console.print(f"[bold red]{label}:[/] {escape(text)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code) from None


def main() -> None:
    app()
