import pytest
import torch

from pie import models

CIFAR = [f"DRD_C100_{k}" for k in ("230K", "115K", "57K", "49K", "29K", "14K", "12K", "7K")]
TINY = [f"DRD_TINY_{k}" for k in ("918K", "459K", "393K", "229K", "197K", "115K", "98K", "57K",
                                  "49K")]


def test_names_cover_every_configuration():
    assert set(models.names()) == set(CIFAR + TINY + ["resnet18", "mobilenetv1"])


@pytest.mark.parametrize("name,classes", [("DRD_C100_12K", 100), ("DRD_TINY_57K", 200),
                                          ("resnet18", 100), ("mobilenetv1", 100)])
def test_default_class_counts_and_forward(name, classes):
    net = models.build(name).eval()
    size = net.config.input_size
    with torch.no_grad():
        assert net(torch.zeros(2, 3, size, size)).shape == (2, classes)
    assert models.build(name, num_classes=10).config.num_classes == 10


def test_state_dict_layout_matches_deepreduce_release():
    keys = set(models.build("DRD_C100_230K").state_dict())
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.1.bn2.bias",
              "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_mean",
              "layer4.1.conv2.weight", "fc.weight", "fc.bias"):
        assert k in keys
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)


def test_culling_and_thinning_remove_relu_modules():
    net = models.build("DRD_C100_12K")  # culled 1 and 4, bottom thinned
    assert net.relu is None
    for stage in (1, 4):
        for block in getattr(net, f"layer{stage}"):
            assert block.relu1 is None and block.relu2 is None
    for stage in (2, 3):
        for block in getattr(net, f"layer{stage}"):
            assert block.relu1 is not None and block.relu2 is None
    base = models.build("resnet18")
    assert base.relu is not None and base.layer1[0].relu2 is not None


def test_alpha_rho_and_blocks():
    cfg = models.config("DRD_C100_7K")
    assert cfg.widths == (32, 64, 128, 256) and cfg.stem_stride == 2
    net = models.build("DRD_C100_7K")
    assert [len(getattr(net, f"layer{s}")) for s in range(1, 5)] == [2, 1, 1, 1]
    assert net.conv1.stride == (2, 2)


def test_config_round_trip_and_errors():
    for name in models.names():
        cfg = models.config(name)
        assert models.from_config(cfg.to_dict()).config == cfg
    with pytest.raises(ValueError, match="unknown network"):
        models.build("DRD_C100_1K")
    with pytest.raises(ValueError, match="blocks"):
        models.ResNetConfig(blocks=(2, 2, 2))
    with pytest.raises(ValueError, match="rho"):
        models.ResNetConfig(rho=0.0)
    with pytest.raises(ValueError, match="family"):
        models.from_config({"family": "vgg"})
