"""The error for pretrained weights that do not load names what was asked for and what to do."""

from pathlib import Path

from torch import nn

from zoo.catalog.backbones import BackboneSpec, PretrainedUnavailable, PretrainedWeights, unavailable


def _spec(weights: PretrainedWeights | None) -> BackboneSpec:
    return BackboneSpec("local-only", "text", lambda **_: nn.Identity(), weights=weights, structure=None)


def test_a_backbone_without_published_weights_names_the_local_checkpoint_that_failed(tmp_path: Path):
    checkpoint = tmp_path / "model.pt"
    error = unavailable(_spec(None), checkpoint, ValueError("bad magic number"))
    assert isinstance(error, PretrainedUnavailable)
    message = str(error)
    assert f"could not load local checkpoint {checkpoint}" in message
    assert "ValueError: bad magic number" in message
    assert "scale=tiny" in message


def test_published_weights_that_fail_to_load_name_their_source_format_and_licence():
    weights = PretrainedWeights("hf-hub:org/model", licence="apache-2.0", local_format="a transformers model folder")
    message = str(unavailable(_spec(weights), True, OSError("no network")))
    assert "could not load pretrained weights hf-hub:org/model (OSError: no network)" in message
    assert "(a transformers model folder; licence apache-2.0)" in message
    assert "pip install" not in message  # no package ships them
