"""CLIP-Adapter: outputs against alpha * MLP(f) + (1 - alpha) * f computed by hand from the base model's own
embeddings (CLIP retrieval per frame and per caption, a timm ViT, an HF BERT classifier); what trains; a save
and load round trip; refusals where no module returns a pooled embedding; mixed batches; no merging."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo.peft as zp
from tests.conftest import tiny_bert, tiny_vit
from tests.peft.method_checks import perturb_trainable
from tests.peft.test_mixed_batch import check_rows
from zoo.errors import ConfigError
from zoo.peft.clip_adapter import CHILD_NAME
from zoo.peft.engine import adapter_modules, peft_state
from zoo.peft.structure import BERT_STYLE, VIT_STYLE

VISUAL, TEXT = "backbone.clip.visual", "backbone.text_embedding"


def retrieval_model():
    pytest.importorskip("open_clip")
    from zoo.catalog.backbones import create_backbone
    from zoo_domains.video_text.tasks import RetrievalModel

    torch.manual_seed(0)
    return RetrievalModel(create_backbone("clip_vit_b32", scale="tiny")).eval()


def clips_and_captions(model, frames=(2, 3, 1)):
    generator = torch.Generator().manual_seed(4)
    words = ["a dog runs", "a red car at night", "two people dance", "rain on a window"]
    examples = [(torch.rand(count, 3, 40, 48, generator=generator), words[i]) for i, count in enumerate(frames)]
    return model.backbone.collate(examples)


def by_hand(layer_of, name: str, embedding: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * ReLU(W_up ReLU(W_down f)) + (1 - alpha) * f with the adapter's two matrices, written out."""
    layer = layer_of(name)
    down, up = layer.adapter_down["default"].weight, layer.adapter_up["default"].weight
    return alpha * torch.relu(torch.relu(embedding @ down.T) @ up.T) + (1 - alpha) * embedding


def adapter_layer(model):
    return lambda name: getattr(model.get_submodule(name), CHILD_NAME)


def test_retrieval_embeddings_are_the_blend_of_the_base_embeddings():
    model = retrieval_model()
    base = copy.deepcopy(model)
    zp.apply(model, "clip_adapter", towers="both", alpha=0.3, text_alpha=0.6)
    perturb_trainable(model, seed=1)
    batch = clips_and_captions(model)
    mask = batch["frame_mask"]
    with torch.no_grad():
        outputs = model(batch)
        frames = base.backbone.clip.encode_image(batch["pixel_values"][mask])  # the real frames, one row each
        adapted = by_hand(adapter_layer(model), VISUAL, frames, 0.3)
        per_clip = adapted.new_zeros(*mask.shape, adapted.shape[-1])
        per_clip[mask] = adapted
        video = per_clip.sum(1) / mask.sum(1, keepdim=True)  # the domain's mean over real frames
        captions = base.backbone.clip.encode_text(batch["input_ids"])
        text = by_hand(adapter_layer(model), TEXT, captions, 0.6)
    expected = torch.stack([F.normalize(video, dim=-1), F.normalize(text, dim=-1)], dim=1)
    torch.testing.assert_close(outputs, expected, atol=1e-5, rtol=1e-5)
    # the adapter does something: the base model's embeddings differ
    with torch.no_grad():
        assert not torch.allclose(base(batch), outputs, atol=1e-3)


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_classifier_logits_are_the_head_on_the_blended_pooled_embedding(kind):
    model = tiny_vit() if kind == "vit" else tiny_bert()
    base = copy.deepcopy(model)
    zp.apply(model, "clip_adapter", alpha=0.4)
    perturb_trainable(model, seed=2)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if kind == "vit":
            images = torch.randn(4, 3, 32, 32, generator=generator)
            logits = model(images)
            pooled = base.forward_head(base.forward_features(images), pre_logits=True)
            adapted = by_hand(adapter_layer(model), "fc_norm", pooled, 0.4)
        else:
            ids = torch.randint(0, 100, (4, 7), generator=generator)
            logits = model(input_ids=ids).logits
            pooled = base.bert(input_ids=ids).pooler_output
            adapted = by_hand(adapter_layer(model), "bert.pooler", pooled, 0.4)
        head = model.head if kind == "vit" else model.classifier
        expected = head.modules_to_save["default"](adapted)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_only_the_adapters_and_the_temperature_train():
    model = retrieval_model()
    width = model.backbone.hidden_size
    zp.apply(model, "clip_adapter", towers="both")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    adapters = {
        f"{place}.{CHILD_NAME}.adapter_{part}.default.weight" for place in (VISUAL, TEXT) for part in ("down", "up")
    }
    assert set(trainable) == adapters | {"temperature.modules_to_save.default.logit_scale"}
    assert trainable[f"{VISUAL}.{CHILD_NAME}.adapter_down.default.weight"].shape == (width // 4, width)
    assert trainable[f"{TEXT}.{CHILD_NAME}.adapter_up.default.weight"].shape == (width, width // 4)
    model.train()
    batch = clips_and_captions(model)
    model.loss(model(batch), torch.arange(3)).backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (name in trainable), name


def test_default_tower_is_the_image_one_with_the_papers_ratio():
    model = zp.apply(retrieval_model(), "clip_adapter")
    config = peft_state(model).adapters["default"].config
    assert (config.towers, config.reduction, config.alpha, config.ratio("image")) == ("image", 4, 0.2, 0.2)
    assert [name for name, _ in adapter_modules(model) if CHILD_NAME in name] == [f"{VISUAL}.{CHILD_NAME}"]
    assert config.ratio("text") == 0.2  # text_alpha None: the image ratio
    bert = zp.apply(tiny_bert(), "clip_adapter")  # a text-only structure: its text embedding
    assert peft_state(bert).adapters["default"].config.towers == "text"


def test_save_load_round_trip(tmp_path):
    model = retrieval_model()
    base = copy.deepcopy(model)
    zp.apply(model, "clip_adapter", towers="both", reduction=2, alpha=0.5, text_alpha=0.1)
    perturb_trainable(model, seed=3)
    zp.save_adapter(model, tmp_path / "adapter")
    _, tensors = zp.read_adapter_dir(tmp_path / "adapter")
    assert sorted(tensors) == sorted(
        f"base_model.model.{place}.{CHILD_NAME}.adapter_{part}.weight"
        for place in (VISUAL, TEXT)
        for part in ("down", "up")
    ) + ["base_model.model.temperature.logit_scale"]
    loaded = zp.load_adapter(base, tmp_path / "adapter")
    batch = clips_and_captions(model)
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    config = peft_state(loaded).adapters["default"].config
    assert (config.towers, config.reduction, config.alpha, config.text_alpha) == ("both", 2, 0.5, 0.1)


def test_disabled_gives_the_base_model_and_merge_refuses():
    model = retrieval_model()
    base = copy.deepcopy(model)
    zp.apply(model, "clip_adapter", towers="both")
    batch = clips_and_captions(model)
    with torch.no_grad(), zp.disabled(model):
        assert torch.equal(model(batch), base(batch))
    with pytest.raises(ConfigError, match="uses clip_adapter, which adds computation that cannot be folded"):
        zp.merge(model)
    with pytest.raises(ConfigError, match="uses clip_adapter"):
        zp.merge_and_unload(model)
    assert torch.equal(zp.unload(model)(batch), base(batch))
    assert not any(CHILD_NAME in name for name, _ in model.named_modules())


# -- refusals ----------------------------------------------------------------------------------------------
def assert_refused_and_untouched(model, match, **options):
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=match) as refused:
        zp.apply(model, "clip_adapter", **options)
    assert "clip_adapter" in str(refused.value)
    assert not any(CHILD_NAME in name for name, _ in model.named_modules())
    assert model.state_dict().keys() == before.keys()


def test_a_structure_without_a_pooled_embedding_is_refused_saying_why():
    no_embedding = dataclasses.replace(BERT_STYLE, name="bert-pooled-in-code", embeddings={})
    assert_refused_and_untouched(
        tiny_bert(),
        r"'bert-pooled-in-code' declares no pooled embedding.*pool their features in code.*"
        r"Structures that declare one: .*timm-vit \(image\)",
        structure=no_embedding,
    )


def test_a_backbone_that_pools_in_code_is_refused_saying_why():
    from zoo.catalog.backbones import create_backbone
    from zoo.tasks.heads import TaskModel

    model = TaskModel(create_backbone("bert_base", scale="tiny"), "classification", 2)  # TextBackbone.pool()
    assert_refused_and_untouched(
        model,
        r"no module of TaskModel returns the text embedding of structure 'hf-bert'.*computes that embedding "
        r"in code",
        structure=BERT_STYLE,
    )


def test_a_tower_the_structure_lacks_is_refused():
    assert_refused_and_untouched(
        tiny_vit(), r"towers='text' is not allowed on structure 'timm-vit'.*'image'", towers="text"
    )
    assert_refused_and_untouched(tiny_bert(), r"towers='both' .* no image embedding", towers="both")
    # a CLIP built without its text tower (for video-only tasks) has no caption embedding to adapt
    pytest.importorskip("open_clip")
    from zoo.catalog.backbones import create_backbone
    from zoo.tasks.heads import TaskModel

    video_only = TaskModel(create_backbone("clip_vit_b32", scale="tiny", text_tower=False), "classification", 2)
    assert_refused_and_untouched(video_only, r"no module of TaskModel returns the text embedding", towers="text")


def test_bad_options_and_missing_structure_are_refused():
    assert_refused_and_untouched(tiny_vit(), r"reduction=64 is not allowed.*32 wide.*reduction <= 32", reduction=64)
    assert_refused_and_untouched(tiny_vit(), r"alpha=1.5 is not allowed; alpha must be in \[0, 1\]", alpha=1.5)
    assert_refused_and_untouched(tiny_vit(), r"towers='video' is not allowed", towers="video")
    assert_refused_and_untouched(tiny_vit(), r"target_modules=.* is not used.*towers=", target_modules=["head"])
    toy = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert_refused_and_untouched(toy, r"clip_adapter needs to know where")
    assert VIT_STYLE.embeddings == {"image": r"(.*\.)?fc_norm"}


# -- mixed batches -----------------------------------------------------------------------------------------
def test_mixed_rows_of_clips_and_captions_use_their_own_adapters():
    model = retrieval_model()
    for seed, (name, options) in enumerate(
        [("a", {"towers": "both"}), ("b", {"towers": "text", "alpha": 0.7}), ("c", {"towers": "image", "reduction": 2})]
    ):
        zp.apply(model, "clip_adapter", adapter_name=name, **options)
        perturb_trainable(model, seed=10 + seed, std=0.3)
    # one frame per clip: the image tower's rows are the clips (several frames each would flatten into it)
    batch = clips_and_captions(model, frames=(1, 1, 1, 1))
    check_rows(model, lambda: model(batch), ["b", "a", None, "c"])


def test_mixed_clips_of_several_frames_are_refused_saying_why():
    model = retrieval_model()
    zp.apply(model, "clip_adapter", adapter_name="a")
    zp.apply(model, "clip_adapter", adapter_name="b", alpha=0.5)
    batch = clips_and_captions(model, frames=(2, 3, 1))
    with pytest.raises(
        ConfigError,
        match=r"3 adapter names were given .* backbone\.clip\.visual\.zoo_clip_adapter sees a batch of 6 rows",
    ):
        with torch.no_grad(), zp.mixed(model, ["a", "b", None]):
            model(batch)
    assert all(module.row_groups is None for _, module in adapter_modules(model))
