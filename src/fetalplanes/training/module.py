"""The Lightning module: loss, optimizer, schedule, metrics and self-describing checkpoints.

One module for both training paths. It is fed either images (``inputs="images"``: the whole
model runs) or cached backbone feature maps (``inputs="features"``: the frozen fast path,
``training.feature_cache``; the frozen backbone is skipped and only the attention block and
the head run). Loss, optimizer rule (``training.optim``), schedule, the validation metric
(:data:`VAL_METRIC`, torchmetrics macro-F1) and the checkpoint record are the same for both.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fetalplanes.core.spec import ModelSpec
from fetalplanes.models.checkpoint import CKPT_KEY, checkpoint_record
from fetalplanes.models.classifier import PlaneClassifier
from fetalplanes.training.config import TrainConfig
from fetalplanes.training.optim import adamw, param_groups, use_fused, warmup_cosine

# The model-selection metric of every run: best.ckpt, early stopping and train_summary.json's
# best_val_f1_macro all read it.
VAL_METRIC = "val/f1_macro"
INPUTS = ("images", "features")

__all__ = ["INPUTS", "PlaneModule", "VAL_METRIC", "warmup_cosine"]


class PlaneModule(L.LightningModule):
    def __init__(self, cfg: TrainConfig, spec: ModelSpec, model: PlaneClassifier, class_weights: list[float] | None = None,
                 inputs: Literal["images", "features"] = "images", record: dict[str, Any] | None = None) -> None:
        """Train ``model`` (built once, by ``models.build``) as ``cfg`` says; ``spec`` is what every
        checkpoint records. ``record``: extra keys written into every checkpoint beside the state
        dict (e.g. the feature-cache description of the fast path)."""
        super().__init__()
        if inputs not in INPUTS:
            raise ValueError(f"unknown inputs {inputs!r}; choose one of {list(INPUTS)}")
        # The spec and config are stored once, in the checkpoint's fetalplanes record
        # (models.checkpoint); Lightning keeps only what it needs itself.
        self.save_hyperparameters(ignore=["cfg", "spec", "model", "record"])
        self.cfg = cfg
        self.spec = spec
        self.inputs = inputs
        self.record = dict(record or {})
        # The same for every save of the run: built once, not at every checkpoint.
        self._checkpoint_record = checkpoint_record(spec, cfg.model_dump(mode="json"))
        n = spec.num_classes
        self.model = model
        if inputs == "features" and any(p.requires_grad for p in self.model.backbone.parameters()):
            raise ValueError("inputs='features' needs a frozen backbone (model.finetune: frozen)")
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=self.cfg.optim.label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=n, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes=n, average="macro")
        if self.cfg.trainer.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, 3, H, W), or of backbone feature maps
        (B, C, h, w) when the module was built with ``inputs="features"``."""
        if self.inputs == "features":
            # Cached maps may be float16 on disk; the frozen backbone is not run again.
            return self.model.forward_head(self.model.attention(x.float()))
        if self.cfg.trainer.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        self.train_acc(logits, y)
        # Not in the progress bar: the bar reads its values every step, which is a host sync per
        # step (the GPU drains its queue); the logger reads them every log_every_n_steps only.
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.val_f1(logits, y)
        self.log("val/loss", self.criterion(logits, y), on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(VAL_METRIC, self.val_f1, on_epoch=True, prog_bar=True, batch_size=len(y))

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        groups = param_groups(self.model, o.lr, o.weight_decay, o.backbone_lr_mult)
        optimizer = adamw(groups, o.lr, fused=use_fused(self.inputs, self.device))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, int(round(o.warmup_epochs * total / max(1, self.trainer.max_epochs))))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = self._checkpoint_record
        checkpoint.update(self.record)
