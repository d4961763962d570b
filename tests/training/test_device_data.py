"""The device data path (``data.loader: device``): batch augmentation on the training device with
per-image parameters hashed from (seed, epoch, index); resume-exact; recorded in config.yaml."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from fetalplanes.core.preprocess import normalize
from fetalplanes.core.spec import Preprocessing
from fetalplanes.training.config import load_config
from fetalplanes.data.augment import N_PARAMS, augment_params
from fetalplanes.training.device_data import augment_batch, normalize_batch

IDENTITY = [0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]  # angle, tx, ty, scale, flip, brightness, contrast, sigma


def _params(b: int, **changes: float) -> torch.Tensor:
    names = ["angle", "tx", "ty", "scale", "flip", "brightness", "contrast", "sigma"]
    row = list(IDENTITY)
    for k, v in changes.items():
        row[names.index(k)] = v
    return torch.tensor([row] * b, dtype=torch.float32)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-3)  # sampling at pixel centres, up to float rounding


def test_geometry_of_the_batch_augmentation() -> None:
    g = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    assert _same(augment_batch(g, _params(3))[:, 0], g.float())  # identity
    assert _same(augment_batch(g, _params(3, flip=1.0))[:, 0], g.float().flip(-1))
    shifted = augment_batch(g, _params(3, tx=2.0))[:, 0]
    assert _same(shifted[:, :, 2:], g.float()[:, :, :-2]) and shifted[:, :, :2].abs().max() < 1e-3  # right, zero fill
    down = augment_batch(g, _params(3, ty=3.0))[:, 0]
    assert _same(down[:, 3:], g.float()[:, :-3])
    zoom = augment_batch(g, _params(3, scale=2.0))[:, 0]  # zoom in: the centre grows, the border leaves
    assert zoom.std() > 0 and not torch.equal(zoom, g.float())
    rot = augment_batch(torch.full((1, 16, 16), 200, dtype=torch.uint8), _params(1, angle=45.0))[0, 0]
    assert rot[8, 8] == pytest.approx(200) and rot[0, 0] == 0  # corners rotate out, centre stays


def test_photometric_steps_and_blur() -> None:
    g = torch.randint(20, 200, (2, 16, 16), dtype=torch.uint8)
    bright = augment_batch(g, _params(2, brightness=1.2))[:, 0]
    assert torch.allclose(bright, (g.float() * 1.2).clamp(0, 255))
    flat = augment_batch(g, _params(2, contrast=0.0))[:, 0]  # contrast 0: every pixel the image mean
    assert torch.allclose(flat, g.float().mean(dim=(1, 2), keepdim=True).expand_as(flat), atol=1e-4)
    blurred = augment_batch(g, _params(2, sigma=1.0))[:, 0]
    assert blurred.std() < g.float().std() and blurred.mean() == pytest.approx(g.float().mean().item(), rel=0.05)
    mixed = _params(2, sigma=1.0)
    mixed[1, 7] = 0.0  # per-image: only the first is blurred
    out = augment_batch(g, mixed)[:, 0]
    assert torch.allclose(out[0], blurred[0]) and _same(out[1], g[1].float())


def test_params_depend_only_on_seed_epoch_and_index() -> None:
    keys = np.arange(3 * 500)  # three epochs of 500 images
    p = augment_params(7, keys, 500, 1.0, 224)
    assert p.shape == (1500, N_PARAMS) and p.dtype == np.float32
    shuffled = np.random.default_rng(0).permutation(keys)
    assert np.array_equal(augment_params(7, shuffled, 500, 1.0, 224), p[shuffled])  # any batch composition
    assert not np.array_equal(p[:500], p[500:1000])  # a new epoch draws anew
    assert not np.array_equal(augment_params(8, keys, 500, 1.0, 224), p)  # and so does another seed
    assert np.abs(p[:, 0]).max() <= 10 and np.abs(p[:, 1:3]).max() <= round(0.06 * 224)
    assert np.all(p[:, 1:3] == np.round(p[:, 1:3]))  # whole-pixel shifts, as torchvision
    assert 0.9 <= p[:, 3].min() and p[:, 3].max() <= 1.1 and set(np.unique(p[:, 4])) == {0.0, 1.0}
    assert 0.75 <= p[:, 5:7].min() and p[:, 5:7].max() <= 1.25
    blur = p[:, 7] > 0
    assert 0.15 < blur.mean() < 0.25 and 0.1 <= p[blur, 7].min() and p[blur, 7].max() <= 1.0
    half = augment_params(7, keys, 500, 0.5, 224)
    assert np.abs(half[:, 0]).max() <= 5


def test_normalize_batch_is_the_core_rule() -> None:
    pre = Preprocessing(image_size=16, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    g = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
    ours = normalize_batch(torch.from_numpy(g)[None, None], pre)[0].numpy()
    assert np.allclose(ours, normalize(g, pre), atol=1e-6)


class _Crash(L.Callback):
    """Stands in for SIGKILL: stops the run when epoch 1 starts (epoch 0's last.ckpt is written)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


@pytest.mark.slow
def test_device_loader_trains_records_itself_and_resumes_exactly(synth_data: Path, tmp_path: Path) -> None:
    from fetalplanes.training.fit import fit

    cfg = load_config("demo", {"data.image_size": 32, "optim.batch_size": 8, "optim.max_epochs": 3,
                               "trainer.progress": False, "trainer.seed": 5, "model.pretrained": "none",
                               "data.loader": "device", "data.augment": 1.0})
    a = fit(synth_data, cfg, tmp_path / "a")
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["data"]["loader"] == "device"
    assert a.summary["execution"] == {"precision": "32-true", "loader": "device", "device": "cpu", "batch_size": 8}
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(synth_data, cfg, tmp_path / "b", extra_callbacks=[_Crash()])
    b = fit(synth_data, cfg, tmp_path / "b", resume=True)
    sa = torch.load(a.last_checkpoint, map_location="cpu", weights_only=False)
    sb = torch.load(b.last_checkpoint, map_location="cpu", weights_only=False)
    assert sa["epoch"] == sb["epoch"] == 2
    for key, value in sa["state_dict"].items():
        assert torch.allclose(value.float(), sb["state_dict"][key].float(), atol=1e-5), key
    assert a.summary["best_val_f1_macro"] == pytest.approx(b.summary["best_val_f1_macro"], abs=1e-6)
