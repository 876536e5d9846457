"""Checkpoint I/O: atomic writes, safetensors, weights-only state and strict loading."""

import pickle

import pytest
import torch
from torch import nn

from d2it import io
from d2it.errors import CheckpointError


def test_safetensors_round_trip_with_metadata(tmp_path):
    shared = torch.randn(4, 4)
    tensors = {"a": shared, "b": shared[1:], "c": torch.arange(3)}
    io.save_safetensors(tensors, tmp_path / "w.safetensors", {"part": "vae", "n": 3})
    loaded, meta = io.load_safetensors(tmp_path / "w.safetensors")
    assert meta == {"part": "vae", "n": "3"}
    for k, v in tensors.items():
        assert torch.equal(loaded[k], v)


def test_corrupt_or_missing_weights_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        io.load_safetensors(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        io.load_safetensors(tmp_path / "bad.safetensors")


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "state.pt"
    io.save_state({"step": 1}, target)
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert io.load_state(target) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_state_loads_weights_only(tmp_path):
    state = {"step": 3, "rng": torch.get_rng_state(), "opt": {"lr": 0.1, "m": [torch.ones(2)]}}
    io.save_state(state, tmp_path / "s.pt")
    back = io.load_state(tmp_path / "s.pt")
    assert back["step"] == 3 and torch.equal(back["rng"], state["rng"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="cannot be read"):
        io.load_state(tmp_path / "evil.pt")


def test_load_into_names_the_mismatch():
    model = nn.Sequential(nn.Linear(2, 3))
    good = model.state_dict()
    io.load_into(model, {k: v.clone() for k, v in good.items()}, "w")
    with pytest.raises(CheckpointError, match="lacks tensor '0.bias'"):
        io.load_into(model, {"0.weight": good["0.weight"]}, "w")
    with pytest.raises(CheckpointError, match="has tensor 'extra'"):
        io.load_into(model, {**good, "extra": torch.ones(1)}, "w")
    with pytest.raises(CheckpointError, match=r"'0.weight' has shape \(4, 2\) but .* expects \(3, 2\)"):
        io.load_into(model, {**good, "0.weight": torch.ones(4, 2)}, "w")


def test_hashes_depend_on_content(tmp_path):
    a = {"w": torch.zeros(3)}
    b = {"w": torch.tensor([0.0, 0.0, 1.0])}
    assert io.state_sha256(a) != io.state_sha256(b)
    assert io.state_sha256(a) == io.state_sha256({"w": torch.zeros(3)})
    (tmp_path / "f").write_bytes(b"abc")
    assert io.file_sha256(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_load_accepts_a_torch_device(tmp_path):
    io.save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors")
    tensors, _ = io.load_safetensors(tmp_path / "w.safetensors", device=torch.device("cpu"))
    assert tensors["w"].device.type == "cpu"
