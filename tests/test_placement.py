"""Placing a model on a worker's devices: the pure decision, then a real split load on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from atlas.errors import ModelFailure, UsageError
from atlas.scoring import placement
from atlas.scoring.placement import GIB, Placement, can_hold, parse_devices, plan, usable

H100 = 80 * GIB


def test_one_device_when_the_weights_fit():
    got = plan(8_000_000_000, {"cuda:0": H100, "cuda:1": H100})
    assert got is not None and got.devices == ("cuda:0",) and not got.split
    assert got.from_pretrained_kwargs() == {"device_map": "cuda:0"}
    # The first device is busy: the second one holds it.
    got = plan(8_000_000_000, {"cuda:0": 4 * GIB, "cuda:1": H100})
    assert got is not None and got.devices == ("cuda:1",)


def test_split_when_only_several_devices_hold_it():
    free = {"cuda:0": H100, "cuda:1": H100}
    got = plan(70_000_000_000, free)  # 140 GB of bf16 weights
    assert got is not None and got.split and got.devices == ("cuda:0", "cuda:1")
    assert got.max_memory == {"cuda:0": usable(H100), "cuda:1": usable(H100)}
    assert got.from_pretrained_kwargs() == {
        "device_map": "auto", "max_memory": {0: usable(H100), 1: usable(H100)},
    }  # fmt: skip
    assert sum(got.max_memory.values()) >= got.weight_bytes
    # Reserve per device: at least 2 GiB or 15% of it stays free for activations.
    assert usable(H100) == H100 - int(0.15 * H100)
    assert usable(10 * GIB) == 8 * GIB


def test_a_worker_that_cannot_hold_a_model_leaves_it():
    assert not can_hold(70_000_000_000, {"cuda:0": H100})
    assert can_hold(70_000_000_000, {f"cuda:{i}": H100 for i in range(2)})
    assert not can_hold(70_000_000_000, {"cuda:0": H100}, dtype="float32")
    assert can_hold(None, {"cuda:0": GIB})  # size unknown: try
    assert plan(None, {"cuda:0": GIB, "cuda:1": GIB}).devices == ("cuda:0",)


def test_device_lists_are_validated():
    assert parse_devices("cuda:0, cuda:1") == ("cuda:0", "cuda:1")
    assert parse_devices("auto") == ("auto",)
    for bad in ("cuda:0,cuda:0", "gpu0", "", "cuda:x,cuda:1", "cuda,cuda:1"):
        with pytest.raises(UsageError):
            parse_devices(bad)


torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")


def test_split_load_scores_like_one_device(zoo_by_name, tmp_path):
    """device_map over cpu and disk: real accelerate dispatch hooks, the same numbers."""
    from atlas.scoring import loading
    from atlas.scoring.engine import score_items
    from atlas.textsets import read_items, sample_path

    folder = zoo_by_name["atlas-zoo/llama-chat-a"].path
    files = sorted(folder.glob("*.safetensors"))
    params = placement.count_parameters(files)
    with torch.device("cpu"):
        whole = loading.load(folder, device="cpu", dtype="float32")
    assert params == sum(p.numel() for p in whole.model.parameters())
    budget = {"cpu": params * 4 // 2}
    split = Placement(("cpu", "disk"), max_memory=budget, weight_bytes=params * 4,
                      offload_folder=str(tmp_path / "offload"))  # fmt: skip
    loaded = loading.load(folder, device="cpu", dtype="float32", placement=split)
    where = set(loaded.model.hf_device_map.values())
    assert where == {"cpu", "disk"} and loaded.device == "cpu,disk"
    items = read_items(sample_path())[:4]
    want = score_items(whole.model, whole.tokenizer, items, ["base"])
    got = score_items(loaded.model, loaded.tokenizer, items, ["base"])
    for key in want:
        np.testing.assert_allclose(got[key].values, want[key].values, atol=1e-4)


def test_several_cuda_devices_without_cuda_is_a_usage_error(zoo_by_name, cli):
    from atlas.scoring import loading

    folder = zoo_by_name["atlas-zoo/llama-chat-a"].path
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(UsageError, match="CUDA"):
        loading.load(folder, device="cuda:0,cuda:1")
    with pytest.raises(UsageError):
        loading.load(folder, device="cuda:0,cuda:0")
    # The CLI accepts the list (the option check knows lists) and refuses it for want of GPUs.
    listed = cli("score", str(folder), "--device", "cuda:0,cuda:1")
    assert listed.exit_code == 2 and "torch sees no CUDA device" in listed.stderr
    twice = cli("score", str(folder), "--device", "cpu,cpu")
    assert twice.exit_code == 2 and "listed twice" in twice.stderr
    assert issubclass(ModelFailure, Exception)
