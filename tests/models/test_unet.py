import math

import pytest
import torch
from torch.nn import functional as F

from ddim.models.unet import AttnBlock, Downsample, UNet, UNetConfig, timestep_embedding


def test_cifar10_config_has_the_ddpm_parameter_count():
    net = UNet(UNetConfig())  # the DDPM CIFAR-10 defaults
    assert sum(p.numel() for p in net.parameters()) == 35_746_307


def test_module_names_follow_the_official_code():
    keys = set(UNet(UNetConfig()).state_dict())
    for name in [
        "temb.dense.0.weight", "temb.dense.1.bias", "conv_in.weight",
        "down.0.block.0.conv1.weight", "down.0.block.1.temb_proj.weight", "down.0.downsample.conv.weight",
        "down.1.block.0.nin_shortcut.weight", "down.1.attn.0.q.weight", "down.1.attn.1.proj_out.bias",
        "mid.block_1.norm1.weight", "mid.attn_1.k.weight", "mid.block_2.conv2.bias",
        "up.0.block.2.nin_shortcut.weight", "up.1.attn.2.v.weight", "up.3.upsample.conv.weight",
        "norm_out.weight", "conv_out.bias",
    ]:  # fmt: skip
        assert name in keys, name
    assert not any(
        k.startswith(("down.3.downsample", "up.0.upsample", "down.0.attn", "down.2.attn")) for k in keys
    )
    assert len(keys) == 328


def test_timestep_embedding_closed_form():
    dim, t = 8, torch.tensor([0, 3])
    emb = timestep_embedding(t, dim)
    freqs = [math.exp(-math.log(10000) * k / (dim // 2 - 1)) for k in range(dim // 2)]
    expected = [[math.sin(s * f) for f in freqs] + [math.cos(s * f) for f in freqs] for s in (0, 3)]
    torch.testing.assert_close(emb, torch.tensor(expected))


def test_attention_equals_the_explicit_softmax_formula():
    torch.manual_seed(0)
    block = AttnBlock(8, groups=4)
    x = torch.randn(2, 8, 4, 4)
    h = block.norm(x)
    q, k, v = (m(h).reshape(2, 8, 16) for m in (block.q, block.k, block.v))  # (B, C, HW)
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(8), dim=2)  # (B, HW_q, HW_k)
    out = torch.einsum("bcj,bij->bci", v, w).reshape(2, 8, 4, 4)
    torch.testing.assert_close(block(x), x + block.proj_out(out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "config",
    [
        UNetConfig(
            resolution=28, in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2, 2), attn_resolutions=(14,)
        ),
        UNetConfig(
            resolution=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), norm_groups=8
        ),
        UNetConfig(
            resolution=8, ch=8, ch_mult=(1, 2), attn_resolutions=(4,), norm_groups=4, resamp_with_conv=False
        ),
    ],
)
def test_output_shape_and_per_sample_independence(config):
    torch.manual_seed(0)
    net = UNet(config).eval()
    x = torch.randn(3, config.in_channels, config.resolution, config.resolution)
    t = torch.tensor([0, 500, 999])
    out = net(x, t)
    assert out.shape == (3, config.out_channels, config.resolution, config.resolution)
    torch.testing.assert_close(
        net(x[1:2], t[1:2]), out[1:2], rtol=1e-5, atol=1e-5
    )  # no mixing across the batch
    assert not torch.allclose(out[0], net(x[:1], t[1:2])[0])  # the timestep matters


def test_dropout_acts_only_in_training_mode():
    torch.manual_seed(0)
    net = UNet(UNetConfig(resolution=8, ch=8, ch_mult=(1,), attn_resolutions=(), dropout=0.5, norm_groups=4))
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10])
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": 28}, "divisible by 2"),
        ({"attn_resolutions": (20,)}, "attn_resolutions entry 20"),
        ({"ch": 48}, "norm_groups"),
        ({"ch": 0}, "positive integer"),
        ({"dropout": 1.0}, "dropout"),
        ({"ch_mult": ()}, "ch_mult"),
    ],
)
def test_config_rejects_impossible_architectures(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**kwargs)


def test_config_dict_round_trip():
    config = UNetConfig(
        resolution=28, in_channels=1, out_channels=1, ch=32, ch_mult=(1, 2, 2), attn_resolutions=(14,)
    )
    d = config.to_dict()
    assert d["type"] == "unet"
    assert UNetConfig.from_dict(d) == config
    with pytest.raises(ValueError, match="unknown U-Net config field"):
        UNetConfig.from_dict({**d, "heads": 4})


def test_avg_pool_downsample_without_conv():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(Downsample(1, with_conv=False)(x), F.avg_pool2d(x, 2))


def test_class_conditioning_adds_one_embedding_and_leaves_unconditional_nets_alone():
    base = UNetConfig()
    assert "num_classes" not in base.to_dict()  # unconditional configs (and checkpoints) unchanged
    conditional = UNetConfig(num_classes=10)
    assert UNetConfig.from_dict(conditional.to_dict()) == conditional
    torch.manual_seed(0)
    net, cond = UNet(base), UNet(conditional)
    extra = sum(p.numel() for p in cond.parameters()) - 35_746_307
    assert extra == 11 * 4 * 128  # (10 classes + the null class) × the time-embedding width
    torch.manual_seed(0)
    cond = UNet(conditional)  # created last, so the other weights initialise exactly as without classes
    assert all(torch.equal(v, cond.state_dict()[k]) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        UNetConfig(num_classes=0)


def test_class_embedding_is_added_to_the_time_embedding():
    """y = None is the null class; each class shifts every block's time embedding by its row."""
    config = UNetConfig(
        resolution=8, ch=8, ch_mult=(1, 2), attn_resolutions=(4,), norm_groups=4, num_classes=3
    )
    torch.manual_seed(0)
    net = UNet(config).eval()
    x, t = torch.randn(4, 3, 8, 8), torch.tensor([1, 10, 50, 99])
    assert torch.equal(net(x, t), net(x, t, torch.full((4,), 3)))
    out = net(x, t, torch.tensor([0, 1, 2, 0]))
    assert not torch.allclose(out, net(x, t), atol=1e-4)
    with torch.no_grad():  # the same shift through the null row reproduces class 1
        net.class_embedding.weight[3] = net.class_embedding.weight[1]
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((4,), 1)))
