"""Greedy layer-wise training (the VGG11 layer-wise study), on the one training loop.

Stage k trains the first k conv blocks of the model's plan (each with the max-pool that follows it
in the plan, if any) under a fresh auxiliary head ``Flatten → Linear(C·H·W, head_width) → ReLU →
Linear(head_width, classes)``. Stage k+1 copies the blocks of stage k, appends the next block
and a new head. With ``freeze`` (the study's variant B) the earlier blocks are frozen: their
weights get no gradient and they run in eval mode (batch norm uses, and keeps, its running
statistics), so their outputs and buffers do not change. Without it (variant C) they keep
training. ``aug_switch`` changes the training augmentation from a given
stage on (variants D/E). The last stage is the whole network with its last head: an ordinary
`ConvNet` with an mlp head, which every other command accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from compresskit.compress.depth import truncated_spec
from compresskit.errors import ParameterError
from compresskit.models import ConvNet, ModelSpec, build_model, count_parameters
from compresskit.train import FitResult, TrainConfig, TrainingState, fit


@dataclass
class LayerwiseConfig:
    """`stage_epochs`: one count for every stage, or one per conv block. `aug_switch`:
    ``(stage, recipe)`` — from that stage on, train with the augmentation recipe given (as
    `Augmentation.parse` reads it)."""

    freeze: bool = True
    stage_epochs: list[int] = field(default_factory=lambda: [7])
    aug_switch: tuple[int, str] | None = None
    analyze_stages: bool = False

    def epochs_for(self, blocks: int) -> list[int]:
        """Epochs of each of `blocks` stages; refuses a list that does not fit the model."""
        epochs = self.stage_epochs * blocks if len(self.stage_epochs) == 1 else list(self.stage_epochs)
        if len(epochs) != blocks:
            raise ParameterError(
                f"{{0}} lists {len(self.stage_epochs)} values but the model has {blocks} conv "
                "blocks; give one value, or one per block.",
                "stage_epochs",
            )
        if any(e <= 0 for e in epochs):
            raise ParameterError(f"{{0}} must all be positive; got {self.stage_epochs}.", "stage_epochs")
        if self.aug_switch is not None and not 1 <= self.aug_switch[0] <= blocks:
            raise ParameterError(
                f"{{0}} must name one of the model's stages 1 to {blocks}; got stage {self.aug_switch[0]}.",
                "aug_switch",
            )
        return epochs

    @staticmethod
    def parse_aug_switch(text: str | None) -> tuple[int, str] | None:
        """``"4:jitter"`` → (4, "jitter"); None stays None."""
        if text is None:
            return None
        stage, sep, recipe = text.partition(":")
        if not sep or not stage.strip().isdigit() or not recipe.strip():
            message = f"{{0}} must look like STAGE:RECIPE, e.g. 4:jitter; got '{text}'."
            raise ParameterError(message, "aug_switch")
        return int(stage), recipe.strip()

    @staticmethod
    def parse_stage_epochs(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values:
            message = f"{{0}} must be an integer or a comma list of them; got '{text}'."
            raise ParameterError(message, "stage_epochs")
        return values


def stage_spec(spec: ModelSpec, stage: int) -> ModelSpec:
    """The model of stage `stage` (1-based): the first `stage` conv blocks and an mlp head."""
    short = truncated_spec(spec, stage)
    return ModelSpec(**{**short.to_dict(), "head": "mlp", "global_pool": False})


def grow(previous: ConvNet | None, spec: ModelSpec, stage: int, *, seed: int) -> ConvNet:
    """Stage `stage`'s model: the blocks of `previous` (weights copied), the next block and a new
    head, both freshly initialised."""
    model = build_model(stage_spec(spec, stage), seed=seed + stage)
    if previous is not None:
        device = next(previous.parameters()).device
        model = model.to(device)
        kept = {k: v for k, v in previous.state_dict().items() if k.startswith("features.")}
        _, unexpected = model.load_state_dict(kept, strict=False)
        assert not unexpected, unexpected
    return model


def freeze_earlier_blocks(model: ConvNet, stage: int) -> list[nn.Parameter]:
    """Freeze every conv block before the newest one and return the parameters that still train.

    Frozen means unchanged outputs and buffers: no gradient, and the block stays in eval mode even
    when the model is put in training mode, so its batch norm normalises with its running
    statistics and never updates them."""
    for block in model.named_blocks("block")[: stage - 1]:
        for p in block.module.parameters():
            p.requires_grad_(False)
        block.module.train = _stay_in_eval.__get__(block.module)  # type: ignore[method-assign]
        block.module.eval()
    return [p for p in model.parameters() if p.requires_grad]


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """`nn.Module.train` of a frozen block: whatever is asked, the block and its children stay in
    eval mode."""
    return nn.Module.train(self, False)


def unfreeze(model: ConvNet) -> None:
    """Undo `freeze_earlier_blocks`: every parameter trains and every block follows `train()`."""
    for p in model.parameters():
        p.requires_grad_(True)
    for m in model.modules():
        m.__dict__.pop("train", None)


@dataclass
class StageResult:
    """One stage: its model (best-validation weights loaded), spec, `fit` result, the number of
    parameters that trained, and the weights after its last epoch."""

    stage: int
    model: ConvNet
    spec: ModelSpec
    fit: FitResult
    trainable: int
    last_state: dict[str, torch.Tensor]


@dataclass
class LayerwiseResume:
    """Where a stopped layer-wise run continues: `stage` (1-based) with `previous`, the model of
    the stage before it (best-validation weights; None for stage 1), and the stage's own
    `model_state` and `fit` state after its last finished epoch (None: start the stage afresh)."""

    stage: int
    previous: ConvNet | None
    model_state: dict[str, torch.Tensor] | None = None
    fit: TrainingState | None = None


def train_layerwise(
    spec: ModelSpec,
    cfg: LayerwiseConfig,
    train_cfg: TrainConfig,
    loaders_for_stage: Callable[[int], tuple],
    *,
    device: torch.device,
    progress=None,
    after_stage: Callable[[StageResult], None] | None = None,
    on_epoch: Callable[[int, ConvNet, TrainingState], None] | None = None,
    resume: LayerwiseResume | None = None,
) -> list[StageResult]:
    """Run every stage (from ``resume.stage`` on, with `resume`); `loaders_for_stage(stage)`
    returns (train, val) loaders for that stage (so the augmentation can switch). `after_stage`
    sees each stage's result with its best-validation weights loaded; `on_epoch(stage, model,
    state)` sees every finished epoch. ``train_cfg.epochs`` is replaced by each stage's count."""
    epochs = cfg.epochs_for(len(spec.conv_widths))
    results: list[StageResult] = []
    first = resume.stage if resume is not None else 1
    previous = resume.previous if resume is not None else None
    for stage, stage_epochs in enumerate(epochs, start=1):
        if stage < first:
            continue
        model = grow(previous, spec, stage, seed=train_cfg.seed).to(device)
        fit_state = None
        if resume is not None and stage == first and resume.model_state is not None:
            model.load_state_dict(resume.model_state)
            fit_state = resume.fit
        trainable = freeze_earlier_blocks(model, stage) if cfg.freeze else list(model.parameters())
        train, val = loaders_for_stage(stage)
        if progress is not None:
            progress.log(f"stage {stage}/{len(epochs)}: {stage_spec(spec, stage).conv_widths}, "
                         f"{sum(p.numel() for p in trainable):,} trainable parameters")  # fmt: skip
        stage_cfg = TrainConfig(**{**train_cfg.to_dict(), "epochs": stage_epochs})
        hook = None if on_epoch is None else (lambda state, s=stage, m=model: on_epoch(s, m, state))
        result = fit(model, train, val, stage_cfg, progress=progress, parameters=trainable,
                     resume=fit_state, on_epoch=hook)  # fmt: skip
        last_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(result.best_state)
        unfreeze(model)
        count = sum(p.numel() for p in trainable)
        done = StageResult(stage, model, stage_spec(spec, stage), result, count, last_state)
        results.append(done)
        if after_stage is not None:
            after_stage(done)
        previous = model
    return results


def stage_row(result: StageResult) -> dict:
    """The stages.csv row of one stage (test accuracy and CSI are added by the caller)."""
    c, h, w = result.spec.feature_shape()
    return {
        "stage": result.stage, "blocks": len(result.spec.conv_widths), "output_shape": f"{c}×{h}×{w}",
        "parameters": count_parameters(result.model), "trainable": result.trainable,
        "epochs": len(result.fit.history), "best_epoch": result.fit.best_epoch,
        "best_val_acc": result.fit.best_val_acc, "seconds": result.fit.seconds,
    }  # fmt: skip
