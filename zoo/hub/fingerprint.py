"""The fingerprint of a backbone's weights (:mod:`zoo.experiment.fingerprint`, where the runner takes it)."""

from zoo.experiment.fingerprint import backbone_fingerprint, state_fingerprint

__all__ = ["backbone_fingerprint", "state_fingerprint"]
