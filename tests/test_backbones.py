"""Backbones: shapes, second-order meta-gradients under vmap + grad, batch-norm variants, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from attnmeta.nn.backbones import MLP, Conv4, DropBlock, ResNet12, build_backbone


def test_output_shapes_heads_and_embeddings():
    assert Conv4((1, 28, 28), 64)(torch.rand(3, 1, 28, 28)).shape == (3, 64)
    conv = build_backbone("conv4", in_shape=(3, 84, 84), hidden=32, out_features=5)
    assert conv.feature_dim == 32 * 5 * 5 and conv(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    resnet = ResNet12((3, 32, 32), widths=(4, 5, 6, 7))
    assert resnet(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert ResNet12().feature_dim == 640
    sinusoid = build_backbone("mlp", in_shape=(1,), out_features=1)
    assert sum(p.numel() for p in sinusoid.parameters()) == (40 + 40) + (40 * 40 + 40) + (40 + 1)
    assert build_backbone("mlp", in_shape=(3,), hidden=[8]).forward(torch.rand(4, 3)).shape == (4, 8)


def _second_order_meta_gradient_matches_references(model: nn.Module, inputs: torch.Tensor,
                                                   outputs: int) -> None:
    """meta-loss(θ) = L_query(θ - α ∇θ L_support(θ)); compare vmap+grad with an autograd loop and with
    central finite differences along a random direction (float64)."""
    model = model.double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    alpha = 0.3
    tasks, n = inputs.shape[0], inputs.shape[1] // 2
    labels = torch.arange(inputs.shape[1]).remainder(outputs).view(1, -1).expand(tasks, -1)

    def loss(p, x, y):
        return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    def meta_loss(p, xs, ys, xq, yq):
        g = grad(loss)(p, xs, ys)
        return loss({k: p[k] - alpha * g[k] for k in p}, xq, yq)

    xs, xq, ys, yq = inputs[:, :n], inputs[:, n:], labels[:, :n], labels[:, n:]
    batched = vmap(grad(meta_loss), in_dims=(None, 0, 0, 0, 0))(params, xs, ys, xq, yq)

    for t in range(tasks):
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        inner = torch.autograd.grad(loss(leaves, xs[t], ys[t]), list(leaves.values()), create_graph=True)
        adapted = {k: v - alpha * g for (k, v), g in zip(leaves.items(), inner)}
        reference = torch.autograd.grad(loss(adapted, xq[t], yq[t]), list(leaves.values()))
        for name, expected in zip(leaves, reference):
            torch.testing.assert_close(batched[name][t], expected, rtol=1e-7, atol=1e-9, msg=name)

    generator = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in params.items()}
    eps = 1e-7  # the meta-loss is very curved (batch norm over few values): a small step in float64

    def shifted(sign: float) -> float:
        return meta_loss({k: v + sign * eps * direction[k] for k, v in params.items()},
                         xs[0], ys[0], xq[0], yq[0]).item()

    numeric = (shifted(1.0) - shifted(-1.0)) / (2 * eps)
    analytic = sum((batched[k][0] * direction[k]).sum() for k in params).item()
    assert abs(numeric - analytic) <= 1e-5 * max(1.0, abs(analytic)), (numeric, analytic)


def test_conv4_second_order_meta_gradient():
    inputs = torch.rand(2, 8, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _second_order_meta_gradient_matches_references(Conv4((1, 16, 16), hidden=3, out_features=2), inputs, 2)


def test_resnet12_second_order_meta_gradient():
    inputs = torch.rand(2, 6, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = ResNet12((3, 16, 16), widths=(2, 3, 3, 4), out_features=3)
    _second_order_meta_gradient_matches_references(model, inputs, 3)


def test_mlp_second_order_meta_gradient():
    inputs = torch.randn(3, 10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _second_order_meta_gradient_matches_references(MLP(4, (6, 5), out_features=3), inputs, 3)


def test_fused_batch_norm_matches_meta_batch_norm_forward_and_first_order_gradients():
    torch.manual_seed(0)
    meta = Conv4((1, 28, 28), hidden=8, out_features=4, norm="meta")
    fused = Conv4((1, 28, 28), hidden=8, out_features=4, norm="fused")
    fused.load_state_dict(meta.state_dict())
    x = torch.rand(10, 1, 28, 28)
    out_meta, out_fused = meta(x), fused(x)
    torch.testing.assert_close(out_fused, out_meta, rtol=1e-4, atol=1e-5)
    out_meta.square().sum().backward()
    out_fused.square().sum().backward()
    for (name, a), (_, b) in zip(meta.named_parameters(), fused.named_parameters()):
        # conv biases before batch norm have zero true gradient: compare on the gradients' overall scale
        scale = max(a.grad.abs().max().item(), 1e-3) if not name.endswith("conv.bias") else 1.0
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)
    # Batch statistics in eval mode too (no running statistics): a batch's output depends on its companions.
    fused.eval()
    assert not torch.allclose(fused(x[:5]), out_fused[:5].detach(), atol=1e-4)


def test_dropblock_drops_about_the_requested_fraction_in_training_only():
    drop = DropBlock(0.2, block_size=3)
    x = torch.ones(64, 4, 10, 10)
    out = drop(x)
    dropped = (out == 0).float().mean().item()
    assert 0.12 < dropped < 0.28
    assert abs(out.mean().item() - 1.0) < 0.02  # rescaled to keep the mean
    drop.eval()
    assert torch.equal(drop(x), x)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'.*conv4"):
        build_backbone("vgg", in_shape=(1, 28, 28))
    with pytest.raises(TypeError, match="backbone 'conv4'.*filters"):
        build_backbone("conv4", in_shape=(1, 28, 28), filters=3)
    with pytest.raises(ValueError, match=r"built for inputs \[n, 1, 28, 28\].*\(3, 28, 28\)"):
        Conv4((1, 28, 28))(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="at least 16x16"):
        Conv4((1, 8, 8))
    with pytest.raises(ValueError, match="in_shape=\\(features,\\)"):
        build_backbone("mlp", in_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="norm must be"):
        Conv4(norm="layer")
    with pytest.raises(ValueError, match="4 entries"):
        ResNet12(widths=(8, 8))


def test_conv4_without_the_last_pool_keeps_a_3x3_map():
    model = Conv4((1, 28, 28), 8, pool_last=False)
    assert model.feature_dim == 8 * 3 * 3 and model(torch.rand(4, 1, 28, 28)).shape == (4, 72)
    head = build_backbone("conv4", in_shape=(3, 84, 84), hidden=4, out_features=5, pool_last=False)
    assert head.feature_dim == 4 * 10 * 10 and head(torch.rand(2, 3, 84, 84)).shape == (2, 5)
    x = torch.rand(5, 1, 28, 28)
    reference = model.blocks[:3](x)
    block = model.blocks[3]
    expected = torch.relu(block.norm(block.conv(reference))).flatten(1)  # no max-pool
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="pool_last must be True or False"):
        Conv4(pool_last="no")


def test_conv4_minimum_image_size_follows_the_number_of_pools():
    assert Conv4((1, 8, 8), 4, pool_last=False)(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(ValueError, match="pools 4 times and needs images of at least 16x16"):
        Conv4((1, 8, 8), 4)


def test_conv4_pools_only_after_the_first_blocks_it_is_asked_to():
    x = torch.rand(3, 1, 28, 28)
    model = Conv4((1, 28, 28), 4, pools=2)
    assert model.feature_dim == 4 * 7 * 7 and model(x).shape == (3, 196)
    pooled = [isinstance(block.pool, torch.nn.MaxPool2d) for block in model.blocks]
    assert pooled == [True, True, False, False]
    assert Conv4((1, 28, 28), 4, pools=0).feature_dim == 4 * 28 * 28
    torch.manual_seed(0)
    three = Conv4((1, 28, 28), 4, pools=3)
    torch.manual_seed(0)
    torch.testing.assert_close(three(x), Conv4((1, 28, 28), 4, pool_last=False)(x))  # the same network
    for bad in (5, -1, 2.0, True):
        with pytest.raises(ValueError, match="pools must be an integer from 0 to 4"):
            Conv4(pools=bad)
    with pytest.raises(ValueError, match="give pools or pool_last=False, not both"):
        Conv4(pools=2, pool_last=False)


def test_a_registered_backbone_is_built_by_name_from_a_config(tmp_path):
    from torch import nn

    from attnmeta.nn.backbones import BACKBONES, build_backbone, register_backbone
    from attnmeta.train import RunConfig, train

    def tiny(in_shape, out_features, hidden=8):
        layers = [nn.Linear(in_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, out_features or hidden)]
        return nn.Sequential(*layers)

    register_backbone("tiny-test", tiny)
    try:
        assert build_backbone("tiny-test", in_shape=(1,), out_features=1, hidden=4)[0].out_features == 4
        with pytest.raises(ValueError, match="^a backbone named 'tiny-test' is already registered; pass "
                                             "replace=True to overwrite it$"):
            register_backbone("tiny-test", tiny)
        config = RunConfig(benchmark="sinusoid", algo="maml", backbone="tiny-test",
                           backbone_options={"hidden": 6}, steps=2, eval_every=2, eval_episodes=2,
                           test_episodes=2, checkpoint_every=2, plot=False, threads=1,
                           run_dir=str(tmp_path / "run"))
        assert train(config, quiet=True, print_fn=lambda _: None).steps == 2
    finally:
        BACKBONES.pop("tiny-test", None)
