"""One place that turns a ``--device`` value into a usable :class:`torch.device`, and the global random generators
a computation on it draws from (:func:`own_generators`, :func:`seed_generators`).

torch accepts many device strings and fails late (a RuntimeError deep inside ``model.to``) when
the hardware is missing; train, evaluate and predict all check here first so the user gets one
clear message instead of a traceback.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from occsynth.errors import plural
from occsynth.errors import OccsynthError

KNOWN = ("cpu", "cuda", "mps")


def resolve_device(name: str | torch.device | None, option: str = "--device") -> torch.device:
    """``None`` -> ``cuda`` when a GPU is available, else ``cpu``; otherwise ``name`` checked.

    Raises :class:`OccsynthError` (message starts with ``option`` and the value) for strings torch
    does not parse, device types this tool does not run on, and devices this machine lacks.
    """
    if name is None or (isinstance(name, str) and not name.strip()):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(name).strip()
    where = f"{option} {text}"
    try:
        device = torch.device(text.lower()) if isinstance(name, str) else name
    except (RuntimeError, ValueError, TypeError):
        raise OccsynthError(f"{where}: not a device (use cpu, cuda or cuda:N)") from None
    if device.type not in KNOWN:
        raise OccsynthError(f"{where}: unsupported device type {device.type!r} (use cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OccsynthError(f"{where}: no CUDA GPU is available on this machine (use --device cpu)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise OccsynthError(f"{where}: this machine has {plural(count, 'CUDA GPU')} (cuda:0 .. cuda:{count - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise OccsynthError(f"{where}: Apple MPS is not available on this machine (use --device cpu)")
    if device.type == "cpu" and device.index not in (None, 0):
        raise OccsynthError(f"{where}: the CPU device has no index (use cpu)")
    return device


def _gpu_index(device: torch.device) -> int:
    """The GPU a CUDA ``device`` names: its index, or without one the current GPU (where torch puts its tensors)."""
    return device.index if device.index is not None else torch.cuda.current_device()


@contextlib.contextmanager
def own_generators(device: torch.device) -> Iterator[None]:
    """Within: seed torch's global generators for ``device`` at will (:func:`seed_generators`); on leaving, by an error
    too, they are as the caller had them, so a notebook's ``torch.rand()`` after ``train()`` does not repeat the run's
    seed. Only the CPU's and ``device``'s are kept: no other GPU is touched, and a CPU run starts no CUDA.

    What :func:`torch.random.fork_rng` does, by hand: its signature changed (torch 2.2, which setup.cfg allows, takes
    ``torch.device(device_type)`` and has no ``device_type=None``), and it asks the device module for the state of
    device 0, which torch 2.2's ``torch.mps.get_rng_state()`` does not take (a TypeError on every MPS run)."""
    cpu_state = torch.get_rng_state()
    if device.type == "cuda":
        index = _gpu_index(device)
        device_state = torch.cuda.get_rng_state(index)
    elif device.type == "mps":
        device_state = torch.mps.get_rng_state()  # its one generator; torch 2.2's takes no device
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if device.type == "cuda":
            torch.cuda.set_rng_state(device_state, index)
        elif device.type == "mps":
            torch.mps.set_rng_state(device_state)


def seed_generators(seed: int, device: torch.device) -> None:
    """:func:`torch.manual_seed` for what a computation on ``device`` draws from: the CPU's generator and
    ``device``'s (torch.manual_seed seeds every GPU's, one not yet started too). Called in :func:`own_generators`."""
    torch.random.default_generator.manual_seed(int(seed))
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.default_generators[_gpu_index(device)].manual_seed(int(seed))
    elif device.type == "mps":
        torch.mps.manual_seed(int(seed))
