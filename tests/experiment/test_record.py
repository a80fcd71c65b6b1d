"""The run record: the base weights' fingerprint the runner takes from the model it trains, and run.json
read back as one typed record."""

from __future__ import annotations

import pytest

import zoo.peft as zp

METHODS_OF_A_TEXT_ENCODER = ["adapter", "adaptformer", "bitfit", "dora", "full", "ia3", "lora", "loreft", "prefix"]


@pytest.mark.parametrize("method", METHODS_OF_A_TEXT_ENCODER)
def test_the_fingerprint_taken_after_the_method_is_applied_is_that_of_the_bare_backbone(method):
    """What ``zoo.hub.load`` computes from a freshly built backbone (no method) is what the runner recorded
    from the backbone it trained, with the method already on it."""
    import torch

    from zoo.experiment.build import build_model, resolve
    from zoo.experiment.config import load_config
    from zoo.experiment.fingerprint import backbone_fingerprint, base_weights_fingerprint
    from zoo.peft.registry import method_config

    config = load_config("text/sst2-lora", ["scale=tiny"])
    config = config.model_copy(update={"method": method_config({"name": method})})
    resolved = resolve(config)
    bare, _ = build_model(config, resolved, 2, apply_method=False)
    adapted, _ = build_model(config, resolved, 2)
    assert zp.parameter_report(adapted).trainable < zp.parameter_report(bare).total or method == "full"
    expected = backbone_fingerprint(bare.backbone)
    assert base_weights_fingerprint(adapted.backbone) == expected
    with torch.no_grad():  # and it is of the weights: one changed value changes it
        next(bare.backbone.parameters()).view(-1)[0] += 1
    assert backbone_fingerprint(bare.backbone) != expected


def test_a_record_of_a_newer_zoo_is_refused_with_the_fix(tmp_path):
    from zoo.errors import ConfigError
    from zoo.experiment.record import RECORD_VERSION, parse_record

    with pytest.raises(ConfigError, match="upgrade zoo"):
        parse_record({"record_version": RECORD_VERSION + 1, "status": "complete"}, tmp_path / "run.json")
    with pytest.raises(ConfigError, match=r"task\.main_metric.*train the run again"):
        parse_record({"record_version": RECORD_VERSION, "task": {"kind": "classification"}}, tmp_path / "run.json")
