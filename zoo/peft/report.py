"""How many parameters an adapter trains, against the backbone it adapts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from zoo.peft.engine import adapter_modules, peft_state


@dataclass(frozen=True)
class ParameterReport:
    trainable: int
    """Parameters the optimizer updates."""
    total: int
    """Every parameter in the model now: backbone, head and all adapters."""
    backbone: int
    """Parameters of the model without any adapter tensors (what full fine-tuning trains)."""
    adapter_bytes: int | None
    """Size of the active adapter on disk (config + safetensors), None without an adapter."""

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    @property
    def parameter_reduction_percent(self) -> float:
        """How many fewer parameters are trained than in full fine-tuning, in percent."""
        return 100.0 * (1.0 - self.trainable / self.backbone) if self.backbone else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        data = asdict(self)
        data["trainable_fraction"] = self.trainable_fraction
        data["parameter_reduction_percent"] = self.parameter_reduction_percent
        return data

    def __str__(self) -> str:
        size = f", adapter {self.adapter_bytes / 1024:.1f} KiB on disk" if self.adapter_bytes is not None else ""
        return (
            f"trainable {self.trainable:,} of {self.total:,} parameters "
            f"({100 * self.trainable_fraction:.4f}%), {self.parameter_reduction_percent:.2f}% fewer than "
            f"full fine-tuning{size}"
        )


def parameter_report(model: nn.Module) -> ParameterReport:
    from zoo.peft.io import adapter_size_bytes

    adapter_ids: set[int] = set()
    state = peft_state(model)
    names = list(state.adapters) if state else []
    for _, module in adapter_modules(model):
        for name in names:
            adapter_ids.update(id(p) for p in module.adapter_parameters(name))
    parameters = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in parameters.values())
    trainable = sum(p.numel() for p in parameters.values() if p.requires_grad)
    backbone = sum(p.numel() for i, p in parameters.items() if i not in adapter_ids)
    size = adapter_size_bytes(model) if state and state.active else None
    return ParameterReport(trainable=trainable, total=total, backbone=backbone, adapter_bytes=size)
