"""`bcnet bench`: what the bilayer head costs over Mask R-CNN's, measured in one run.

Both models share the detector, backbone, batch and images; only the mask head differs, so
the ratio (BCNet / Mask R-CNN) isolates the head. The goal is a train step <= 1.10x.
"""
from __future__ import annotations

import statistics
import time

import torch
from tqdm.auto import tqdm

from .device import own_generators, resolve_device, seed_generators
from .model import build_model, count_parameters

HEADS = ("fcn", "bilayer-gcn")


def _synthetic_batch(batch: int, size: int, num_classes: int, device: torch.device, seed: int = 0):
    """Random images with a few box+mask targets each (real targets, so the mask head trains)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, size, size, generator=g).to(device))
        n = 4
        xy = torch.rand(n, 2, generator=g) * size * 0.6
        wh = torch.rand(n, 2, generator=g) * size * 0.3 + size * 0.1
        boxes = torch.cat([xy, xy + wh], 1).clamp(max=size - 1)
        masks = torch.zeros(n, size, size, dtype=torch.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            masks[j, y0:y1, x0:x1] = 1
        occluder = torch.zeros_like(masks)
        occluder[1:] = masks[:-1]
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, num_classes, (n,), generator=g).to(device),
                        "masks": masks.to(device), "occluder_masks": occluder.to(device)})
    return images, targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (the GPU queue drained before and after)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def bench_heads(*, detector: str = "faster-rcnn", backbone: str = "resnet50", batch: int = 2, size: int = 512,
                iters: int = 5, warmup: int = 2, device: str | torch.device | None = None, num_classes: int = 81,
                amp: bool = False, progress: bool = True) -> dict:
    """Seconds per train step and per inference batch for Mask R-CNN's head and BCNet's, and their ratio;
    ``detections_per_image`` of the last inference batch (with none, the mask heads did not run there).

    Both models get the same detector weights (copied), so they see the same proposals and
    detections; steps alternate between the two models and the median is kept, so drift in the
    machine's load hits both alike. ``progress``: a bar on stderr over the warm-up and timed rounds (a round of
    R50 at 512 px takes seconds on a CPU).
    """
    device = resolve_device(device)  # a bad or absent device is one OccsynthError, before any model is built
    images, targets = _synthetic_batch(batch, size, num_classes, device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "detector": detector, "backbone": backbone, "batch": batch, "size": size, "iters": iters,
              "amp": "bf16" if amp else "off"}
    with own_generators(device):  # seeded below; the caller's as they were again on return
        models, steps, infers, detections = {}, {}, {}, {}
        for head in HEADS:
            seed_generators(0, device)
            models[head] = build_model(num_classes, detector=detector, mask_head=head, backbone=backbone,
                                       min_size=size, max_size=size).to(device)
            models[head].return_occluder_masks = False  # time the instance masks, as Mask R-CNN returns
        shared = models[HEADS[0]].state_dict()
        own = models[HEADS[1]].state_dict()
        models[HEADS[1]].load_state_dict({k: v for k, v in shared.items()
                                          if k in own and own[k].shape == v.shape and "mask" not in k}, strict=False)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
        for head, model in models.items():
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

            def train_step(model=model, optimizer=optimizer):
                seed_generators(1, device)  # same RPN/RoI sampling for both models
                model.train()
                with autocast:
                    loss = sum(model(images, targets).values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            @torch.no_grad()
            def inference(model=model, head=head):
                model.eval()
                with autocast:
                    outputs = model(images)
                detections[head] = [len(o["boxes"]) for o in outputs]

            steps[head], infers[head] = train_step, inference
        times = {head: {"train": [], "inference": []} for head in HEADS}
        with tqdm(total=(warmup + iters) * len(HEADS), desc="bench", unit="step", disable=not progress) as bar:
            for _ in range(warmup):
                for head in HEADS:
                    steps[head]()
                    infers[head]()
                    bar.update()
            for _ in range(iters):
                for head in HEADS:
                    times[head]["train"].append(_timed(steps[head], device))
                    times[head]["inference"].append(_timed(infers[head], device))
                    bar.update()
        for head in HEADS:
            median = {k: statistics.median(v) for k, v in times[head].items()}
            report[head] = {"parameters": count_parameters(models[head]), "train_step_s": round(median["train"], 4),
                            "inference_s": round(median["inference"], 4)}
        base, ours = report["fcn"], report["bilayer-gcn"]
        report["train_step_ratio"] = round(ours["train_step_s"] / base["train_step_s"], 3)
        report["inference_ratio"] = round(ours["inference_s"] / base["inference_s"], 3)
        report["extra_parameters_m"] = round((ours["parameters"] - base["parameters"]) / 1e6, 2)
        # the mask heads run on detections only: with none (an untrained tiny backbone), inference times the detector
        report["detections_per_image"] = detections[HEADS[1]]
        return report
