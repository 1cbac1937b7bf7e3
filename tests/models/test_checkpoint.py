import pytest
import torch

import pie.models as models
from pie.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from netutil import randomize


def _logits(net, x):
    with torch.no_grad():
        return net(x)


@pytest.fixture(scope="module")
def net():
    return randomize(models.build("DRD_C100_12K"), seed=3)


@pytest.fixture(scope="module")
def x():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _deepreduce_file(tmp_path, net, name="drd.pth.tar", extra=None):
    state = {"module." + k: v for k, v in net.state_dict().items()}  # nn.DataParallel
    path = tmp_path / name
    torch.save({"snet": state, "epoch": 199, "best_acc": 64.97, **(extra or {})}, path)
    return path


def test_deepreduce_checkpoint_loads_by_name(tmp_path, net, x):
    loaded = load_checkpoint(_deepreduce_file(tmp_path, net), arch="DRD_C100_12K")
    assert not loaded.training
    assert torch.equal(_logits(loaded, x), _logits(net, x))


def test_pie_format_round_trip_needs_no_arch(tmp_path, net, x):
    path = tmp_path / "net.pt"
    save_checkpoint(net, path)
    loaded = load_checkpoint(path)
    assert loaded.config == net.config
    assert torch.equal(_logits(loaded, x), _logits(net, x))
    with pytest.raises(CheckpointError, match="differs"):
        load_checkpoint(path, arch="DRD_C100_14K")


def test_inference_requires_flags_and_says_what_it_inferred(tmp_path, net, x):
    path = _deepreduce_file(tmp_path, net)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "alpha=0.5" in msg and "blocks=[2, 2, 2, 2]" in msg and "num_classes=100" in msg
    assert "culling" in msg and "rho" in msg
    loaded = load_checkpoint(path, culled=[True, False, False, True], thinned=(False, True), rho=0.5)
    assert models.from_config(loaded.config.to_dict()).config == loaded.config
    assert loaded.config.to_dict() | {"input_size": 32} == models.config("DRD_C100_12K").to_dict()
    assert torch.equal(_logits(loaded, x), _logits(net, x))


def test_plain_state_dict_with_linear_classifier(tmp_path, net, x):
    state = {("linear" + k[2:] if k.startswith("fc.") else k): v
             for k, v in net.state_dict().items()}
    path = tmp_path / "plain.pt"
    torch.save(state, path)
    loaded = load_checkpoint(path, arch="DRD_C100_12K")
    assert torch.equal(_logits(loaded, x), _logits(net, x))


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path, net):
    state = dict(net.state_dict())
    del state["layer3.1.conv2.weight"]
    state["layer9.extra"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, arch="DRD_C100_12K")
    assert "layer3.1.conv2.weight" in str(err.value) and "layer9.extra" in str(err.value)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(_deepreduce_file(tmp_path, net), arch="DRD_C100_230K")


def test_malformed_files(tmp_path, net):
    junk = tmp_path / "junk.pth.tar"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(junk)
    lst = tmp_path / "list.pt"
    torch.save([1, 2, 3], lst)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(lst)
    with pytest.raises(CheckpointError, match="either arch"):
        load_checkpoint(_deepreduce_file(tmp_path, net), arch="DRD_C100_12K", rho=0.5)
    with pytest.raises(CheckpointError, match="no pie configuration"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_meta_round_trip(tmp_path, net):
    from pie.models.checkpoint import checkpoint_meta

    meta = {"input_norm": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}, "classes": ["a", "b"]}
    save_checkpoint(net, tmp_path / "m.pt", meta=meta)
    assert checkpoint_meta(tmp_path / "m.pt") == meta
    save_checkpoint(net, tmp_path / "plain.pt")
    assert checkpoint_meta(tmp_path / "plain.pt") == {}
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    assert checkpoint_meta(tmp_path / "sd.pt") == {}
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(net, tmp_path / "bad.pt", meta={"x": object()})
