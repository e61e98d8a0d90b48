"""bcnet.device's random generators, on the CPU: own_generators gives the caller's back, seed_generators seeds what
a run on the device draws from. A GPU's generators are stood in for (CI has no GPU): which are seeded and kept."""
import contextlib

import pytest
import torch

from bcnet import device as D

CPU = torch.device("cpu")


def test_a_seed_draws_as_torch_manual_seed_and_the_callers_generator_is_given_back_by_an_error_too():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    torch.rand(2)  # a caller's generator in some state of its own
    before = torch.get_rng_state()
    with D.own_generators(CPU):
        D.seed_generators(5, CPU)
        assert torch.equal(torch.rand(3), expected)  # --seed 5 draws what torch.manual_seed(5) draws
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(RuntimeError, match="stopped"), D.own_generators(CPU):
        D.seed_generators(7, CPU)
        raise RuntimeError("stopped")
    assert torch.equal(torch.get_rng_state(), before)


def test_on_the_cpu_no_gpu_generator_is_kept_in_the_way_torch_2_2_reads_it(monkeypatch):
    """torch 2.2 (setup.cfg allows it) takes torch.device() of fork_rng's device_type: None failed there; no devices,
    not all of them (None), so that no GPU is read."""
    calls, real = [], torch.random.fork_rng

    def fork_rng_2_2(devices=None, enabled=True, _caller="fork_rng", _devices_kw="devices", device_type="cuda"):
        calls.append((devices, torch.device(device_type).type))  # as torch 2.2 does first
        return real(devices=devices, enabled=enabled, device_type=device_type)

    monkeypatch.setattr(torch.random, "fork_rng", fork_rng_2_2)
    before = torch.get_rng_state()
    with D.own_generators(CPU):
        D.seed_generators(3, CPU)
    assert calls == [([], "cuda")] and torch.equal(torch.get_rng_state(), before)


class StandIn:
    """A GPU's generator: the seeds it was given."""

    def __init__(self):
        self.seeds = []

    def manual_seed(self, seed):
        self.seeds.append(seed)


def test_on_a_gpu_its_generator_alone_is_kept_and_seeded(monkeypatch):
    gpus, mps, kept = [StandIn(), StandIn()], StandIn(), []
    keep_cpu_generator = torch.random.fork_rng(devices=[], device_type="cuda")  # fork_rng is stood in for below
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "default_generators", gpus)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # the device "cuda" (no index) names
    monkeypatch.setattr(torch.mps, "manual_seed", mps.manual_seed)
    monkeypatch.setattr(torch.random, "fork_rng", lambda **kw: kept.append(kw) or contextlib.nullcontext())
    with keep_cpu_generator:
        for device in ("cuda:0", "cuda", "mps"):
            with D.own_generators(torch.device(device)):
                D.seed_generators({"cuda:0": 7, "cuda": 8, "mps": 9}[device], torch.device(device))
    assert kept == [{"devices": [0], "device_type": "cuda"}, {"devices": [1], "device_type": "cuda"},
                    {"devices": [0], "device_type": "mps"}]
    assert [g.seeds for g in gpus] == [[7], [8]] and mps.seeds == [9]
