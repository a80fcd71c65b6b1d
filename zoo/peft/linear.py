"""Linear probe: train only the task head on a frozen backbone.

    y = head(f(x)),  f frozen

Trainable: the head (``modules_to_save``; by default the backbone structure's head, e.g.
``classifier`` for HF models or ``head`` for timm). Each adapter trains its own copy of
the head, so several probes can share a backbone and disabling gives the original head.
"""

from __future__ import annotations

from zoo.peft.config import ConfigError, MethodConfig
from zoo.peft.engine import InjectionContext
from zoo.peft.registry import register_method


class LinearProbeConfig(MethodConfig):
    def check(self) -> None:
        super().check()
        if self.target_modules is not None:
            raise ConfigError(
                "linear: target_modules is not used, only the head trains; set modules_to_save=[head name]"
            )


@register_method("linear", LinearProbeConfig, starts_at_identity=True)
def inject_linear(context: InjectionContext, config: LinearProbeConfig) -> None:
    if config.modules_to_save is None and context.structure is not None:
        config.modules_to_save = context.structure.head_names(context.model)
    if not config.modules_to_save:
        raise ConfigError(
            f"linear: no task head found on {type(context.model).__name__}; a linear probe trains only the head, "
            f"so name it with modules_to_save=['classifier'] (or the model's head module)"
        )
