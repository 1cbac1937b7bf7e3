"""``python -m pie.serve``: TCP server with concurrent clients, the client CLI, the demo."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pie
from pie import serve
from pie.models import ResNetConfig, from_config

SHAPE = (3, 16, 16)
NORM = {"mean": [0.3, 0.3, 0.3], "std": [0.25, 0.25, 0.25]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    cfg = ResNetConfig(alpha=0.125, culled=(True, False, False, False), thinned=(False, True),
                       num_classes=10, input_size=16)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    pie.save_checkpoint(from_config(cfg).eval(), path,
                        meta={"input_norm": NORM, "input_shape": list(SHAPE)})
    return path


@pytest.fixture()
def running(checkpoint: Path):  # type: ignore[no-untyped-def]
    server = serve.load_server(checkpoint)
    listener = pie.TcpListener("127.0.0.1", 0)
    stop = threading.Event()
    worker = threading.Thread(target=serve.serve_forever, args=(server, listener, 2, stop))
    worker.start()
    yield server, listener.port
    stop.set()
    worker.join(30)
    listener.close()


def _query(port: int, x: np.ndarray) -> np.ndarray:
    with pie.tcp_connect("127.0.0.1", port) as ch:
        plan = serve.fetch_public_plan(ch)
        logits, _ = pie.Client(plan).infer(ch, x)
    return logits


def test_concurrent_clients_and_a_failing_one(running) -> None:  # type: ignore[no-untyped-def]
    server, port = running
    rng = np.random.default_rng(0)
    xs = [rng.random(SHAPE) for _ in range(3)]
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        results[i] = _query(port, xs[i])

    # A client that vanishes mid-protocol must not disturb the others.
    rude = pie.tcp_connect("127.0.0.1", port)
    serve.fetch_public_plan(rude)
    rude.close()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, x in enumerate(xs):
        assert np.array_equal(results[i], server.plan.run_reference(x))


def test_client_cli_json(running, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    server, port = running
    x = np.random.default_rng(1).random(SHAPE)
    np.save(tmp_path / "x.npy", x)
    assert serve.main(["client", "--connect", f"127.0.0.1:{port}", "--input",
                       str(tmp_path / "x.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.array_equal(np.array(out["logits"]), server.plan.run_reference(x))
    assert out["prediction"] == int(np.argmax(out["logits"]))
    assert out["online_bytes"] > 0 and out["plan"] == server.digest


def test_inputs(tmp_path: Path) -> None:
    img = (np.random.default_rng(2).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    x = serve.load_input(tmp_path / "x.png", SHAPE)
    assert x.shape == SHAPE and np.allclose(x, img.transpose(2, 0, 1) / 255.0)
    np.save(tmp_path / "bad.npy", np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="expects"):
        serve.load_input(tmp_path / "bad.npy", SHAPE)
    np.save(tmp_path / "big.npy", np.full(SHAPE, 2.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        serve.load_input(tmp_path / "big.npy", SHAPE)


def test_demo_runs_on_the_bundled_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "prediction: class" in out
    assert "equals the cleartext fixed-point reference: yes" in out


def test_server_loads_a_deepreduce_checkpoint(tmp_path: Path) -> None:
    net = pie.models.build("DRD_C100_12K").eval()
    path = tmp_path / "drd.pth.tar"
    torch.save({"snet": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    server = serve.load_server(path, arch="DRD_C100_12K")
    assert server.plan.input_shape == (3, 32, 32)
    assert server.plan.relu_count() == 12_288
    # No recorded normalisation: the CIFAR-100 statistics are folded in.
    norm = (serve.CIFAR100_STATS[0], serve.CIFAR100_STATS[1])
    assert server.digest == pie.compile(net, (3, 32, 32), input_norm=norm).digest()


def test_clients_killed_during_offline_and_online(running) -> None:  # type: ignore[no-untyped-def]
    server, port = running
    plan_public = server.public_plan()
    # Killed during the offline phase: after the handshake and HE key set-up,
    # while the server waits for the first encrypted share.
    ch = pie.tcp_connect("127.0.0.1", port)
    serve.fetch_public_plan(ch)
    pie.Client(plan_public).session(ch)
    ch.close()
    # Killed during the online phase: offline done, masked input never sent.
    ch = pie.tcp_connect("127.0.0.1", port)
    serve.fetch_public_plan(ch)
    session = pie.Client(plan_public).session(ch)
    session.offline()
    ch.close()
    # The server goes on serving the next client correctly.
    x = np.random.default_rng(3).random(SHAPE)
    assert np.array_equal(_query(port, x), server.plan.run_reference(x))


def test_bundled_model_twenty_inputs_bit_exact() -> None:
    from importlib import resources

    with resources.as_file(resources.files("pie") / "data" / "demo_model.pt") as path:
        plan = serve.load_server(path).plan
    rng = np.random.default_rng(20)
    for _ in range(20):
        x = rng.random(plan.input_shape)
        logits, _ = pie.infer(plan, x)
        assert np.array_equal(logits, plan.run_reference(x))
