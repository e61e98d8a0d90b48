"""`bcnet`: train and evaluate BCNet bilayer mask heads on torchvision detectors."""
import click

from cli import bcnet_bench_commands, pipeline_commands, predict_commands, train_commands
from cli.common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="occsynth-bcnet")
def main():
    """BCNet (occluder + occludee bilayer mask heads) on torchvision Faster R-CNN / FCOS.

    `bcnet train-synthetic --tiny --out runs/tiny` runs the whole paper pipeline on the
    embedded demo data on CPU in about a minute.
    """


for _module in (train_commands, pipeline_commands, predict_commands, bcnet_bench_commands):
    for _command in _module.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":
    main()
