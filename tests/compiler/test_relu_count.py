import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pie.models as models
from pie.compiler import relu_count, relu_report

# ReLU counts of the released DeepReDuce configurations (REFERENCE.md).
EXPECTED = {
    "resnet18": 557_056,
    "DRD_C100_230K": 229_376,
    "DRD_C100_115K": 114_688,
    "DRD_C100_57K": 57_344,
    "DRD_C100_49K": 49_152,
    "DRD_C100_29K": 28_672,
    "DRD_C100_14K": 14_336,
    "DRD_C100_12K": 12_288,
    "DRD_C100_7K": 7_168,
    "DRD_TINY_918K": 917_504,
    "DRD_TINY_459K": 458_752,
    "DRD_TINY_393K": 393_216,
    "DRD_TINY_229K": 229_376,
    "DRD_TINY_197K": 196_608,
    "DRD_TINY_115K": 114_688,
    "DRD_TINY_98K": 98_304,
    "DRD_TINY_57K": 57_344,
    "DRD_TINY_49K": 49_152,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_relu_counts_match_reference(name):
    size = 64 if name.startswith("DRD_TINY") else 32
    assert relu_count(models.build(name), (3, size, size)) == EXPECTED[name]


def test_baseline_per_part_breakdown():
    report = relu_report(models.build("resnet18"), (3, 32, 32))
    assert report.parts == {"stem": 65_536, "stage1": 262_144, "stage2": 131_072,
                            "stage3": 65_536, "stage4": 32_768}
    assert report.total == 557_056 and len(report.layers) == 17
    assert "557,056" in report.table()


def test_report_lists_layers_of_a_culled_network():
    report = relu_report(models.build("DRD_C100_12K"), (3, 32, 32))
    assert [layer.name for layer in report.layers] == [
        "layer2.0.relu1", "layer2.1.relu1", "layer3.0.relu1", "layer3.1.relu1"]
    assert [layer.shape for layer in report.layers] == [(64, 8, 8)] * 2 + [(128, 4, 4)] * 2


def test_functional_and_method_relus_are_counted():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = F.relu(self.conv(x))
            return torch.relu(y) + y.relu()

    assert relu_count(Net(), (3, 5, 6)) == 3 * 4 * 5 * 6


def test_bad_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        relu_count(models.build("DRD_C100_12K"), (32, 32))
    with pytest.raises(ValueError, match="does not fit"):
        relu_count(models.build("DRD_C100_12K"), (1, 32, 32))
