"""`occsynth`: build synthetic occlusion sets, COCO-OCC, and occluder annotations."""
import click

from cli import (cocoocc_commands, convert_commands, generate_commands, inspect_commands, occsynth_bench_commands,
                 source_commands)
from cli.common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="occsynth-bcnet")
def main():
    """Synthetic occlusion data for instance segmentation (BCNet-style).

    Start with `occsynth generate --out OUT` (embedded demo source, nothing to download),
    or point it at COCO with `--ann instances_train2017.json --images train2017/`.
    """


for _module in (generate_commands, source_commands, cocoocc_commands, inspect_commands, convert_commands,
                occsynth_bench_commands):
    for _command in _module.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":
    main()
