"""Full fine-tuning: the baseline every PEFT method is compared with.

    W <- W - lr * grad(W)   for every parameter of the model

Trainable: everything. There is no separate adapter: the saved "adapter" is the whole
state dict, and the base model cannot be recovered from the adapted one, so full
fine-tuning cannot be disabled, deleted or share a model with other adapters.
"""

from __future__ import annotations

from zoo.peft.config import ConfigError, MethodConfig
from zoo.peft.engine import InjectionContext
from zoo.peft.registry import register_method


class FullConfig(MethodConfig):
    def check(self) -> None:
        super().check()
        if self.target_modules is not None:
            raise ConfigError("full: target_modules is not used, every parameter is trained; leave it unset")
        if self.modules_to_save:
            raise ConfigError(
                "full: modules_to_save is not used, the head is trained with everything else; leave it unset"
            )
        self.modules_to_save = []  # the head trains in place: no separate copy


@register_method("full", FullConfig, trains_base=True, starts_at_identity=True)
def inject_full(context: InjectionContext, config: FullConfig) -> None:
    """Nothing to inject: the engine marks every base parameter trainable."""
