"""The Lightning module: loss, optimizer, schedule, metrics and self-describing checkpoints."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fetalplanes.models.checkpoint import CKPT_KEY, checkpoint_record
from fetalplanes.models.registry import build_model
from fetalplanes.training.config import TrainConfig


class PlaneModule(L.LightningModule):
    def __init__(self, config: dict[str, Any], spec: dict[str, Any], class_weights: list[float] | None = None) -> None:
        super().__init__()
        # The spec and config are stored once, in the checkpoint's fetalplanes record
        # (models.checkpoint); Lightning keeps only what it needs itself.
        self.save_hyperparameters(ignore=["config", "spec"])
        self.cfg = TrainConfig(**config)
        self.spec = dict(spec)
        n = len(spec["class_names"])
        self.model = build_model(self.cfg.model, n)
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=self.cfg.optim.label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=n, average="macro")
        if self.cfg.trainer.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.trainer.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.val_f1(logits, y)
        self.log("val/loss", self.criterion(logits, y), on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("val/f1_macro", self.val_f1, on_epoch=True, prog_bar=True, batch_size=len(y))

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # No weight decay on biases and norm scales; the backbone learns slower than the
            # new attention + head (discriminative learning rates for fine-tuning).
            key = (name.startswith("backbone."), p.ndim <= 1)
            groups.setdefault(key, []).append(p)
        param_groups = [
            {"params": ps, "lr": o.lr * (o.backbone_lr_mult if is_bb else 1.0), "weight_decay": 0.0 if no_wd else o.weight_decay}
            for (is_bb, no_wd), ps in groups.items()
        ]
        optimizer = torch.optim.AdamW(param_groups, lr=o.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, int(round(o.warmup_epochs * total / max(1, self.trainer.max_epochs))))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from fetalplanes.core.spec import ModelSpec

        checkpoint[CKPT_KEY] = checkpoint_record(ModelSpec.from_dict(self.spec), self.cfg.model_dump(mode="json"))


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.01) -> float:
    """Linear warm-up to 1, then cosine decay to ``floor`` at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
