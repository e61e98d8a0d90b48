"""What every command shares: turning library errors into one clear message."""
from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import stat
import sys
from typing import Callable, Iterator

import click

from bcnet.ranks import lead_process  # no torch: the lead is known before torch loads
from occsynth import stopping
from occsynth.errors import OccsynthError, key_values, os_error_reason, plural, skip_lines
from occsynth.pool import local_workers
from occsynth.writer import check_shard


class ReportedError(click.ClickException):
    """Bad input or environment: printed as 'Error: ...' with exit status 2, no traceback."""

    exit_code = 2


class Group(click.Group):
    """A click group whose commands report OccsynthError (and OSError) as one message, and stop on
    SIGTERM (what batch schedulers send on cancel or time limit) as they stop on Ctrl-C.

    A stopped command exits with 128 + the signal's number, as a process killed by it would report
    in a shell: 130 for Ctrl-C, 143 for SIGTERM (scripts can tell "stopped" from "failed", 1 or 2).
    Under torchrun a stop reaches every rank: only the lead process (:func:`bcnet.ranks.lead_process`) prints the
    'Stopped' line. A refused input is said by every rank: an error one rank alone meets (a file another node lacks)
    must not go unsaid.
    """

    def invoke(self, ctx: click.Context):
        try:
            with stopping.stop_on_signals():
                result = super().invoke(ctx)
                stopping.raise_if_stopping()  # a stop some library swallowed: not a finished command
                return result
        except OccsynthError as exc:
            raise ReportedError(str(exc)) from None
        except BrokenPipeError as exc:
            if not _stdout_reader_gone():  # another pipe (a worker's, a FIFO given as a path): a real failure
                raise ReportedError(_os_error_message(exc)) from None
            # the reader has gone (`occsynth stats ... | head`): stop quietly, as Unix tools do, and keep
            # Python from failing again on flushing stdout at exit
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(141) from None  # 128 + SIGPIPE: what a shell reports for it
        except OSError as exc:  # disk full, permissions, ... outside the library's own checks
            raise ReportedError(_os_error_message(exc)) from None
        except KeyboardInterrupt as exc:
            signum = stopping.stop_requested() or signal.SIGINT
            replaced = f"; {str(exc).rstrip('. ')}" if str(exc).strip() else ""  # an error raised while it unwound
            # under torchrun a stop (Ctrl-C, or the launcher's SIGTERM to every rank when one fails) reaches every
            # rank: one 'Stopped' line, the lead's
            if lead_process():
                click.echo(f"Stopped ({signal.Signals(signum).name}){replaced}.", err=True)
            raise click.exceptions.Exit(128 + int(signum)) from None


def _os_error_message(exc: OSError) -> str:
    """'FILE: reason' (the file once, where the reason already starts with it)."""
    reason = os_error_reason(exc)
    where = f"{exc.filename}: " if exc.filename and not reason.startswith(f"{exc.filename} ") else ""
    return f"{where}{reason}"


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe or socket whose reading end is closed (poll reports an error on it):
    the one broken pipe that means "the reader has had enough", not a failure."""
    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no real stdout (a notebook, a test runner), no poll
        return False


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange, which lets NaN through (it compares false with both bounds) and, without an upper
    bound, infinity ("inf", "1e400"): both refused here too."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a number in the range {self._describe_range()}.", param, ctx)
        return number


quiet_option = click.option("--quiet", "--no-progress", "quiet", is_flag=True,
                            help="No progress bars (messages and results are still printed).")
"""The one switch for progress bars, under both names users try first."""


cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False),
    help="Cache of cutout banks (CACHE_DIR/banks), cutout pixels and the demo source "
         "[default: $XDG_CACHE_HOME/occsynth or ~/.cache/occsynth].")


def option_names(ctx: click.Context) -> dict[str, str]:
    """Each option's parameter name -> the option as typed (``{"base_lr": "--lr"}``): library errors about a
    setting then name what the user wrote, not the library's name for it."""
    return {p.name: p.opts[0] for p in ctx.command.params if isinstance(p, click.Option) and p.name}


def note_capped_workers(workers: int) -> None:
    """Say so when ``--workers`` asks for more processes than this machine's cores (the library runs
    :func:`occsynth.pool.local_workers` of them), instead of capping it unseen."""
    capped = local_workers(workers)
    if capped < workers:
        click.echo(f"note: --workers {workers}: this process may use {plural(capped, 'CPU core')}; running "
                   f"{plural(capped, 'worker')}", err=True)


def parse_shard(value: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; None -> (0, 1). An empty value (an unset variable in a job script) is refused:
    every task would render the whole set."""
    if value is None:
        return 0, 1
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        # '/64' or '3/': a job script's variable (e.g. $SLURM_ARRAY_TASK_ID) that is not set in this job
        unset = "; i or n is empty: is the variable that gives it set?" if "" in value.split("/") else ""
        raise click.BadParameter(f"expected i/n such as 0/4, got {value!r}{unset}", param_hint="'--shard'") from None
    try:
        return check_shard((i, n))
    except OccsynthError:
        # an array job numbered from 1 (Slurm's --array=1-N) gives N/N, and no task renders shard 0
        why = (f"shards are numbered from 0: i runs from 0 to {n - 1} for n = {n} (an array job's task ids 0-{n - 1})"
               if n >= 1 else "n must be at least 1")
        raise click.BadParameter(f"{why}, got {value!r}", param_hint="'--shard'") from None


def echo_skips(skipped: dict, heading: str) -> None:
    """Print :func:`skip_lines`."""
    for line in skip_lines(skipped, heading):
        click.echo(line)


@contextlib.contextmanager
def hint_on_stop(hint: str, only_if: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """Print ``interrupted: hint`` when the block is stopped (Ctrl-C, SIGTERM, or an error that replaced one:
    :func:`occsynth.stopping.is_stop`), before 'Stopped (...)': a stopped command says what its output holds and
    what to do next. ``only_if()``, asked at the stop, says whether the hint is about anything (e.g. whether the
    output folder it describes exists: a stop before the command made it leaves nothing to describe)."""
    try:
        yield
    except BaseException as exc:
        if stopping.is_stop(exc) and only_if():
            click.echo(f"\ninterrupted: {hint}", err=True)
        raise


def echo_occluder_report(report: dict) -> None:
    """The summary of a tool that writes occluder annotations (annotate-occluders, convert-*):
    what was written, then any other non-zero counts."""
    counts = dict(report["counts"])
    click.echo(f"wrote {report['out']}: {plural(counts.pop('annotations'), 'annotation')} in "
               f"{plural(counts.pop('images'), 'image')}, {counts.pop('with_occluders')} with occluders")
    others = {k: v for k, v in counts.items() if v}
    if others:
        click.echo("other counts: " + key_values(others))
