"""The command line as a whole: every command's --help works, and options shared by many commands
are spelled the same way in each."""
import click
import pytest
from click.testing import CliRunner

from cli.bcnet_cli import main as bcnet_main
from cli.occsynth_cli import main as occsynth_main

COMMANDS = [(group, name) for group in (occsynth_main, bcnet_main) for name in group.commands]


@pytest.mark.parametrize("group, name", COMMANDS, ids=[f"{g.name}-{n}" for g, n in COMMANDS])
def test_every_command_explains_itself(group, name):
    result = CliRunner().invoke(group, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(group.commands[name].help or "") > 20
    for param in group.commands[name].params:  # every option says what it is for
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"{group.name} {name} {param.opts[0]} has no help text"


def test_progress_bars_are_switched_off_by_the_same_flags_everywhere():
    with_bars = 0
    for group, name in COMMANDS:
        params = {p.name: p for p in group.commands[name].params if isinstance(p, click.Option)}
        flags = {flag for p in params.values() for flag in p.opts}
        if "--quiet" in flags or "--no-progress" in flags:
            with_bars += 1
            assert params["quiet"].opts == ["--quiet", "--no-progress"], f"{group.name} {name}"
    assert with_bars >= 12  # generate, merge, bank, build-cocoocc, validate, train, evaluate, ...


def test_an_annotations_file_is_given_with_the_same_flags_everywhere():
    """bcnet's commands take --ann or --annotations; occsynth's took only --ann, so `occsynth build-cocoocc
    --annotations X` after `bcnet train --annotations X` was "No such option"."""
    for group, name in COMMANDS:
        for param in group.commands[name].params:
            if isinstance(param, click.Option) and "--ann" in param.opts:
                assert param.opts[:2] == ["--ann", "--annotations"], f"{group.name} {name}"


def test_every_ranged_number_option_refuses_nan():
    """click's FloatRange lets 'nan' through (it compares false with both bounds): every ranged float option of
    both tools uses FiniteFloatRange, which refuses it as click refuses any other value out of range. Without an
    upper bound click lets infinity through too ('inf', or '1e400', which overflows to it): refused as well."""
    ranged = unbounded = 0
    for group, name in COMMANDS:
        for param in group.commands[name].params:
            if isinstance(param.type, click.FloatRange):
                ranged += 1
                with pytest.raises(click.BadParameter, match="is not a number in the range"):
                    param.type.convert("nan", param, None)
                if param.type.max is None:
                    unbounded += 1
                    for value in ("inf", "1e400"):
                        with pytest.raises(click.BadParameter, match=f"'{value}' is not a number in the range"):
                            param.type.convert(value, param, None)
    assert ranged >= 11  # generate (5), build-cocoocc, annotate-occluders, validate, preview, evaluate, predict
    assert unbounded >= 1  # validate --balance-tolerance


def test_console_scripts_run_the_groups_and_a_ctrl_c_while_importing_stops_quietly(monkeypatch, capsys):
    import importlib

    from cli import launch
    monkeypatch.setattr("sys.argv", ["occsynth", "--version"])
    with pytest.raises(SystemExit) as ran:
        launch.occsynth()
    assert ran.value.code == 0 and "version" in capsys.readouterr().out

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    with pytest.raises(SystemExit) as stopped:
        launch.bcnet()
    assert stopped.value.code == 130 and capsys.readouterr().err == "Stopped (SIGINT).\n"


def test_a_file_where_a_folder_is_needed_is_named(tmp_path, demo_source):
    from occsynth.errors import os_error_reason

    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError) as raised:
        (tmp_path / "afile" / "sub").mkdir(parents=True)
    assert os_error_reason(raised.value) == f"{tmp_path / 'afile'} is a file, not a folder"
    with pytest.raises(FileExistsError) as raised:  # an exclusive create: the file is where a file belongs
        open(tmp_path / "afile", "x")
    assert os_error_reason(raised.value) == "File exists"
    assert os_error_reason(raised.value, making_folder=True) == f"{tmp_path / 'afile'} is a file, not a folder"
    ann, _ = demo_source
    runner = CliRunner()
    plot = runner.invoke(occsynth_main, ["stats", str(ann), "--plot", str(tmp_path / "afile" / "x.png")])
    assert plot.exit_code == 2 and f"{tmp_path / 'afile'} is a file, not a folder" in plot.output
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "banks").write_text("x")
    cache = runner.invoke(occsynth_main, ["generate", "--out", str(tmp_path / "o"), "--num-images", "2",
                                          "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    banks = tmp_path / "cache" / "banks"
    assert cache.exit_code == 2 and cache.output.strip() == f"Error: cannot make folder {banks}: {banks} is a file, not a folder"
    out = runner.invoke(occsynth_main, ["generate", "--out", str(tmp_path / "afile" / "o"), "--num-images", "2", "--quiet"])
    assert out.exit_code == 2 and f"{tmp_path / 'afile'} is a file, not a folder" in out.output


def test_an_os_error_names_its_file_once(tmp_path):
    """An OSError outside the library's own checks is 'Error: FILE: reason'; where the reason already starts with
    the file (a file where a folder is needed), the file is not said twice."""
    import os

    from cli.common import Group

    (tmp_path / "afile").write_text("x")

    @click.command("list")
    @click.argument("path")
    def list_command(path):
        os.listdir(path)

    group = Group(commands={"list": list_command})
    file_as_folder = CliRunner().invoke(group, ["list", str(tmp_path / "afile")])
    assert file_as_folder.exit_code == 2
    assert file_as_folder.output == f"Error: {tmp_path / 'afile'} is a file, not a folder\n"
    missing = CliRunner().invoke(group, ["list", str(tmp_path / "gone")])
    assert missing.exit_code == 2
    assert missing.output == f"Error: {tmp_path / 'gone'}: No such file or directory\n"


def test_a_reader_that_goes_away_stops_a_command_quietly(demo_source):
    import subprocess
    import sys

    ann, _ = demo_source
    # the pipe's reading end is closed before the command writes: as `occsynth stats ... | head -1` once head exits
    proc = subprocess.Popen([sys.executable, "-m", "cli.occsynth_cli", "stats", str(ann)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_a_broken_pipe_that_is_not_stdout_is_an_error_not_a_quiet_stop(demo_source, tmp_path):
    import subprocess
    import sys

    # stdout is a pipe whose reader is still there; another pipe breaks (a worker's, a FIFO given as a path)
    script = ("import cli.inspect_commands as m\n"
              "def broken(*_, **__): raise BrokenPipeError(32, 'Broken pipe', '/tmp/a-fifo')\n"
              "m.stats_from_path = broken\n"
              "from cli.occsynth_cli import main\n"
              f"main(['stats', {str(demo_source[0])!r}])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Error: /tmp/a-fifo: Broken pipe" in proc.stderr, proc.stderr


def test_a_folder_that_cannot_be_made_is_named(tmp_path):
    from occsynth.atomic import make_folder
    from occsynth.errors import OccsynthError

    (tmp_path / "afile").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")  # mkdir says only "File exists", naming nothing
    dangling = f"{tmp_path / 'dangling'} is a link to a missing path ({tmp_path / 'gone'})"
    for folder, why in [(tmp_path / "afile", f"{tmp_path / 'afile'} is a file, not a folder"),
                        (tmp_path / "afile" / "sub", f"{tmp_path / 'afile'} is a file, not a folder"),
                        (tmp_path / "dangling", dangling),
                        (tmp_path / "dangling" / "sub", dangling)]:
        with pytest.raises(OccsynthError) as raised:
            make_folder(folder)
        assert str(raised.value) == f"cannot make folder {folder}: {why}"
    assert make_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()


def test_generate_help_says_which_defaults_a_recipe_replaces():
    """A recipe's [run], [composite] and [bank] tables set these options' values; --seed, --image-format and
    --jpeg-quality showed a bare default (0, jpg, 95) although a recipe's seed or format is what a run takes."""
    import dataclasses

    from occsynth.bank import BankOptions
    from occsynth.generate import RunSettings
    from occsynth.schedule import CompositeOptions

    params = {p.name: p for p in occsynth_main.commands["generate"].params if isinstance(p, click.Option)}
    fields = {f.name for cls in (RunSettings, CompositeOptions, BankOptions) for f in dataclasses.fields(cls)}
    shown = sorted(fields & set(params))
    assert {"seed", "image_format", "jpeg_quality", "num_images", "pastes", "min_area"} <= set(shown)
    assert [name for name in shown if "or the recipe's" not in params[name].help] == []
