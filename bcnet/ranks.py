"""Which process of a launch speaks for the command and writes its files: the only one, or rank 0 under torchrun.
No torch import here, so that the CLI can ask before (or without) loading torch."""
from __future__ import annotations

import os
import sys


def lead_process() -> bool:
    """Whether this process is the lead: rank 0 of its process group once torch.distributed set one up (a caller may
    give ranks of its own), else of torchrun's ``RANK``, or the only process. Under torchrun every rank runs the
    command: the lead alone writes checkpoints and logs and prints notes and the 'Stopped' line, so that they come
    once (an error is said by every rank that meets it: one rank alone may)."""
    dist = sys.modules.get("torch.distributed")  # not imported: no group can be set up
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"
