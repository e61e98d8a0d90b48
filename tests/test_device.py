"""bcnet.device's random generators, on the CPU: own_generators gives the caller's back, seed_generators seeds what
a run on the device draws from. A GPU's generators are stood in for (CI has no GPU): which are seeded and kept."""
import types

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


class FakeGenerators:
    """A device module's random generators as torch 2.2 has them (setup.cfg's lowest torch): torch.mps takes no
    device argument (torch.mps.get_rng_state(0) is a TypeError there), torch.cuda one per GPU. Each generator's state
    is its seed, so what was seeded and what was given back can be read."""

    def __init__(self, count: int = 1):
        self.seeds = [7] * count
        self.touched: set[int] = set()

    def get(self, index: int = 0) -> torch.Tensor:
        self.touched.add(index)
        return torch.tensor([self.seeds[index]])

    def put(self, state: torch.Tensor, index: int = 0) -> None:
        self.touched.add(index)
        self.seeds[index] = int(state[0])


def test_own_generators_gives_the_device_generator_back_on_torch_2_2s_mps(monkeypatch):
    mps = FakeGenerators()
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: mps.get())  # torch 2.2's signatures: no device
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda new_state: mps.put(new_state))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: mps.put(torch.tensor([seed])))
    before = torch.get_rng_state()
    with D.own_generators(torch.device("mps")):
        D.seed_generators(3, torch.device("mps"))
        assert mps.seeds == [3] and not torch.equal(torch.get_rng_state(), before)
    assert mps.seeds == [7] and torch.equal(torch.get_rng_state(), before)


def test_own_generators_keeps_the_runs_gpu_only_and_a_cpu_run_reads_none(monkeypatch):
    """cuda:1 seeds and gives back GPU 1's generator only; cuda without an index the current GPU's (where torch puts
    the model); a CPU run starts no CUDA (no GPU is needed: torch.cuda is faked with two)."""
    cuda = FakeGenerators(2)
    generators = [types.SimpleNamespace(manual_seed=lambda seed, i=i: cuda.put(torch.tensor([seed]), i))
                  for i in range(2)]
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda.get(device))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda new_state, device="cuda": cuda.put(new_state, device))
    monkeypatch.setattr(torch.cuda, "default_generators", generators, raising=False)
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    for device in (torch.device("cuda", 1), torch.device("cuda")):
        cuda.touched.clear()
        with D.own_generators(device):
            D.seed_generators(3, device)
            assert cuda.seeds == [7, 3]
        assert cuda.seeds == [7, 7] and cuda.touched == {1}

    def no_cuda(*args, **kwargs):
        raise AssertionError("a CPU run touched CUDA")

    for name in ("init", "get_rng_state", "set_rng_state", "current_device", "manual_seed", "manual_seed_all"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    before = torch.get_rng_state()
    with D.own_generators(torch.device("cpu")):
        D.seed_generators(3, torch.device("cpu"))
        assert torch.equal(torch.rand(2), torch.rand(2, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(torch.get_rng_state(), before)
