"""`bcnet bench`: what the bilayer head costs over Mask R-CNN's, measured in one run.

Both models share the detector, backbone, batch and images; only the mask head differs, so
the ratio (BCNet / Mask R-CNN) isolates the head. The goal is a train step <= 1.10x.
"""
from __future__ import annotations

import time

import torch

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


def _time(fn, iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def bench_heads(*, detector: str = "faster-rcnn", backbone: str = "resnet50", batch: int = 2, size: int = 512,
                iters: int = 5, warmup: int = 2, device: str | None = None, num_classes: int = 81,
                amp: bool = False) -> dict:
    """Seconds per train step and per inference batch for Mask R-CNN's head and BCNet's, and their ratio."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    images, targets = _synthetic_batch(batch, size, num_classes, device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "detector": detector, "backbone": backbone, "batch": batch, "size": size, "iters": iters}
    for head in HEADS:
        model = build_model(num_classes, detector=detector, mask_head=head, backbone=backbone,
                            min_size=size, max_size=size).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

        def train_step():
            model.train()
            with autocast:
                loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        @torch.no_grad()
        def inference():
            model.eval()
            with autocast:
                model(images)

        report[head] = {"parameters": count_parameters(model),
                        "train_step_s": round(_time(train_step, iters, warmup, device), 4),
                        "inference_s": round(_time(inference, iters, warmup, device), 4)}
    base, ours = report["fcn"], report["bilayer-gcn"]
    report["train_step_ratio"] = round(ours["train_step_s"] / base["train_step_s"], 3)
    report["inference_ratio"] = round(ours["inference_s"] / base["inference_s"], 3)
    report["extra_parameters_m"] = round((ours["parameters"] - base["parameters"]) / 1e6, 2)
    return report
