"""Mask heads: the GCN block, the four ablation heads, both presets."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bcnet.heads import BILAYER_HEADS, MASK_HEADS, BilayerMaskHead, GCNBlock, build_mask_head


def test_gcn_block_shape_affinity_and_residual():
    torch.manual_seed(0)
    block = GCNBlock(8)
    x = torch.randn(2, 8, 5, 6)
    assert block(x).shape == x.shape
    a = block.affinity(x)
    assert a.shape == (2, 30, 30)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 30))
    # With W_g = 0 the graph term is sigma(0) = ReLU(LayerNorm(0)) = 0: Z is exactly X (the residual).
    nn.init.zeros_(block.g.weight)
    assert torch.equal(block(x), x)


def test_gcn_block_computes_eq_1_2_node_by_node():
    """Z_i = ReLU(LayerNorm(sum_j A_ij x_j W_g)) + x_i, A_ij = softmax over j of theta(x_i) . phi(x_j): row i is what
    node i draws from every node (a transposed A, or no ReLU, passes the shape, row-sum and residual checks)."""
    torch.manual_seed(0)
    block = GCNBlock(4)
    x = torch.randn(2, 4, 3, 5)
    theta, phi, g = (torch.einsum("dc,bcn->bnd", conv.weight[:, :, 0, 0], x.flatten(2))
                     for conv in (block.theta, block.phi, block.g))
    a = torch.softmax(torch.einsum("bid,bjd->bij", theta, phi), dim=-1)
    z = F.relu(F.layer_norm(a @ g, (4,), block.norm.weight, block.norm.bias))
    torch.testing.assert_close(block.affinity(x), a)
    torch.testing.assert_close(block(x), z.transpose(1, 2).reshape(x.shape) + x)


def test_gcn_relates_distant_nodes_unlike_a_conv():
    torch.manual_seed(0)
    block = GCNBlock(4).eval()
    x = torch.randn(1, 4, 14, 14)
    y = x.clone()
    y[0, :, 0, 0] += 5.0  # change one corner node
    assert not torch.allclose(block(x)[0, :, 13, 13], block(y)[0, :, 13, 13])  # the far corner sees it


def test_gcn_batchnorm_variant_as_released():
    block = GCNBlock(8, norm="batch", relu=False, scaled=True, output_proj=True)
    assert isinstance(block.norm, nn.BatchNorm2d) and block.out is not None
    assert block.scale == pytest.approx(8 ** -0.5)
    assert block(torch.randn(3, 8, 4, 4)).shape == (3, 8, 4, 4)
    with pytest.raises(ValueError):
        GCNBlock(8, norm="group")


def test_gcn_projections_start_as_the_heads_other_convs():
    """The released code MSRA-fills its non-local 1x1s like every conv of the head (mask_head.py):
    N(0, 2 / fan_out), not torch's default uniform, which is ~2.4x narrower and flattens the affinity."""
    torch.manual_seed(0)
    block = GCNBlock(256, norm="batch", relu=False, scaled=True, output_proj=True)
    for conv in (block.theta, block.phi, block.g, block.out):
        assert conv.weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)


EXPECTED_KEYS = {
    "fcn": {"mask"},
    "gcn": {"mask", "boundary"},
    "bilayer-fcn": {"mask", "boundary", "occluder_mask", "occluder_boundary"},
    "bilayer-gcn": {"mask", "boundary", "occluder_mask", "occluder_boundary"},
}


@pytest.mark.parametrize("preset", ["paper", "original"])
@pytest.mark.parametrize("name", MASK_HEADS)
def test_head_forward_shapes_and_grads_reach_both_branches(name, preset):
    torch.manual_seed(0)
    head = build_mask_head(name, in_channels=16, num_classes=3, preset=preset)
    x = torch.randn(2, 16, 14, 14)
    out = head(x)
    assert set(out) == EXPECTED_KEYS[name]
    classes = 1 if preset == "original" else 3
    assert out["mask"].shape == (2, classes, 28, 28)
    if name in BILAYER_HEADS:
        assert out["occluder_mask"].shape == (2, 1, 28, 28)
        assert out["occluder_boundary"].shape == (2, 1, 28, 28)
        # the occludee mask loss alone trains the occluder branch too (its feature feeds the occludee layer)
        out["mask"].sum().backward()
        assert head.occluder[0][0].weight.grad.abs().sum() > 0
        assert head.occludee[0][0].weight.grad.abs().sum() > 0
        head.zero_grad()
        out = head(x)
        sum(v.sum() for v in out.values()).backward()
        for branch in (head.occluder, head.occludee):
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())
    else:
        sum(v.sum() for v in out.values()).backward()
        assert all(p.grad is not None for p in head.parameters())


def test_paper_and_original_layouts():
    paper = build_mask_head("bilayer-gcn", 16, 3, preset="paper")
    kinds = [type(m).__name__ for m in paper.occluder]
    assert kinds == ["Sequential", "GCNBlock", "Sequential", "Sequential"]  # 3x3 conv -> GCN -> 2 convs
    assert isinstance(paper.occluder[1].norm, nn.LayerNorm)
    assert isinstance(paper.fuse, nn.Conv2d)  # W_f
    original = build_mask_head("bilayer-gcn", 16, 3, preset="original")
    kinds = [type(m).__name__ for m in original.occludee]
    assert kinds == ["Sequential", "Sequential", "GCNBlock", "Sequential", "Sequential"]  # non-local after 2nd conv
    assert isinstance(original.occludee[2].norm, nn.BatchNorm2d)
    assert isinstance(original.fuse, nn.Identity)
    assert set(original.occluder_predictor.deconvs) == {"occluder_boundary", "occluder_mask"}
    fcn = build_mask_head("bilayer-fcn", 16, 3)
    assert not any(isinstance(m, GCNBlock) for m in fcn.modules())


def test_bilayer_fuses_occluder_feature_into_roi_feature():
    """With W_f = 0 the occludee layer sees only the RoI feature: its outputs equal a run on x alone."""
    torch.manual_seed(0)
    head: BilayerMaskHead = build_mask_head("bilayer-gcn", 8, 2, conv_dim=8).eval()
    x = torch.randn(1, 8, 14, 14)
    with torch.no_grad():
        fused = head(x)["mask"]
        nn.init.zeros_(head.fuse.weight)
        plain = head(x)["mask"]
        alone = head.occludee_predictor(head.occludee(x))["mask"]
    torch.testing.assert_close(plain, alone)
    assert not torch.allclose(fused, plain)


def test_unknown_names_are_errors():
    with pytest.raises(ValueError):
        build_mask_head("bilayer", 16, 3)
    with pytest.raises(ValueError):
        build_mask_head("gcn", 16, 3, preset="journal")
    with pytest.raises(ValueError):
        build_mask_head("gcn", 16, 3, gcn_layers=2)


@pytest.mark.parametrize("name", MASK_HEADS)
def test_padding_the_roi_count_changes_no_output_and_no_gradient(name):
    """run_in_buckets pads RoIs with zeros for cuDNN's sake: the real RoIs' outputs and the weights'
    gradients must come out as without it (the paper preset has no batch-coupled layer)."""
    from bcnet.roi_heads import run_in_buckets

    torch.manual_seed(0)
    head = build_mask_head(name, 8, 3, conv_dim=8)
    x = torch.randn(5, 8, 14, 14)
    grads = []
    for multiple in (1, 4):
        head.zero_grad()
        out = run_in_buckets(head, x, multiple)
        assert {k: v.shape[0] for k, v in out.items()} == {k: 5 for k in out}
        sum((v * torch.rand(v.shape, generator=torch.Generator().manual_seed(1))).sum()
            for v in out.values()).backward()
        grads.append(({k: v.detach() for k, v in out.items()}, [p.grad.clone() for p in head.parameters()]))
    (plain, plain_grads), (padded, padded_grads) = grads
    for key in plain:
        torch.testing.assert_close(padded[key], plain[key], rtol=1e-4, atol=1e-5)  # float sums in another order
    for a, b in zip(plain_grads, padded_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert run_in_buckets(head, x[:0], 4)["mask"].shape[0] == 0


def test_the_mask_branch_pads_only_on_a_gpu_and_never_a_batch_normalised_head_in_training(bucket_multiples):
    from bcnet import roi_heads

    x = torch.randn(3, 8, 14, 14)
    for preset in ("paper", "original"):
        branch = roi_heads.build_mask_branch("bilayer-gcn", 8, 3, ["0"], preset, {"conv_dim": 8})
        branch.run_head(x)  # CPU: padding would only cost time
        assert bucket_multiples.pop() == 1
        # on a GPU (tests/test_gpu.py runs it there) these decide: the bucket, and no padding of a BatchNorm head
        assert branch.roi_bucket == roi_heads.ROI_BUCKET and branch._batch_norm == (preset == "original")
