"""Mixed-adapter batches (``zp.mixed``): every row of one forward pass is checked against the model
run with that row's adapter alone (``set_active_adapter``; ``disabled()`` for None rows), on a tiny
BERT and a tiny ViT for every method that mixes, on nn.MultiheadAttention (sequence-first, with
masks) and on zoo's TaskModel; refusals say why; the model's adapter state is left as it was."""

import copy

import pytest
import torch
from torch import nn

import zoo.peft as zp
from tests.conftest import tiny_bert, tiny_vit
from tests.peft.method_checks import small_options
from zoo.errors import ConfigError
from zoo.peft.engine import adapter_modules
from zoo.peft.structure import Structure

BACKBONES = {"bert": tiny_bert, "vit": tiny_vit}
# Rows of None mix with these: each adapted layer leaves those rows at the base output.
WITH_BASE_ROWS = [
    "adapter",
    "adaptformer",
    "bitfit",
    "clip_adapter",
    "dora",
    "ia3",
    "kadaptation",
    "linear",
    "lora",
    "loreft",
    "lst",
    "sparse",
]
SECOND_OPTIONS = {
    "adapter": {"variant": "pfeiffer", "non_linearity": "gelu"},
    "adaptformer": {"bottleneck": 4, "scale": 0.5},
    "dora": {"r": 2, "lora_alpha": 4},
    "ia3": {"feedforward_modules": []},
    "kadaptation": {"n": 2, "r": 2},
    "lora": {"r": 2, "lora_alpha": 4},
    "loreft": {"positions": "f1+l2"},
    "lst": {"reduction_factor": 4, "init": "random"},
    "sparse": {"density": 0.5, "selection": "random"},
    "vpt": {"deep": True},
}
"""Adapter "b" differs from "a" and "c" in its options, so a layer may hold some adapters and not others."""
MIXED_ROWS = ["a", None, "b", "a", "c", None]


def run(kind, model, batch):
    if kind == "bert":
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return model(batch["images"])


def make_batch(kind):
    generator = torch.Generator().manual_seed(7)
    if kind == "bert":
        ids = torch.randint(0, 100, (6, 8), generator=generator)
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0
        mask[4, 6:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return {"images": torch.randn(6, 3, 32, 32, generator=generator)}


def add_adapters(model, adapters):
    """Apply each (name, method, options) and move its new trainable tensors (head included) away
    from their initial values, differently for each adapter."""
    for seed, (name, method, options) in enumerate(adapters):
        zp.apply(model, method, adapter_name=name, **options)
        generator = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def one_adapter_at_a_time(model, forward, names):
    """Row i of the batch as the model computes it with adapter names[i] alone (None: disabled)."""
    active = zp.active_adapter(model)
    rows = []
    with torch.no_grad():
        for row, name in enumerate(names):
            if name is None:
                with zp.disabled(model):
                    rows.append(forward()[row])
            else:
                zp.set_active_adapter(model, name)
                rows.append(forward()[row])
    zp.set_active_adapter(model, active)
    return torch.stack(rows)


def check_rows(model, forward, names):
    with torch.no_grad(), zp.mixed(model, names):
        mixed = forward()
    expected = one_adapter_at_a_time(model, forward, names)
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=1e-5)
    # the check means something: rows of different adapters differ from the base and from each other
    with torch.no_grad(), zp.disabled(model):
        base = forward()
    for row, name in enumerate(names):
        if name is not None:
            assert not torch.allclose(mixed[row], base[row], atol=1e-4), f"row {row} ({name}) equals the base"
    return mixed


def method_adapters(kind, method, count=3):
    second = dict(small_options(method), **SECOND_OPTIONS.get(method, {}))
    if method == "prefix" and kind == "vit":  # a prefix of another length: the attention call is split by rows
        second["num_virtual_tokens"] = 3
    options = [small_options(method), second, small_options(method)]
    return [(name, method, options[i]) for i, name in enumerate("abc"[:count])]


@pytest.mark.parametrize("kind", sorted(BACKBONES))
@pytest.mark.parametrize("method", WITH_BASE_ROWS)
def test_each_row_computes_with_its_own_adapter(kind, method):
    model = add_adapters(BACKBONES[kind](), method_adapters(kind, method))
    batch = make_batch(kind)
    check_rows(model, lambda: run(kind, model, batch), MIXED_ROWS)


@pytest.mark.parametrize("kind", sorted(BACKBONES))
@pytest.mark.parametrize("method", ["prefix", "vpt"])
def test_methods_that_lengthen_the_sequence_mix_rows_of_equal_length(kind, method):
    model = add_adapters(BACKBONES[kind](), method_adapters(kind, method))
    batch = make_batch(kind)
    names = ["a", "b", "c", "b", "a", "a"]
    if method == "prefix" and kind == "vit":  # split by rows: other prefix lengths and base rows mix too
        names = MIXED_ROWS
    check_rows(model, lambda: run(kind, model, batch), names)


def test_rows_of_different_methods_on_one_model():
    model = add_adapters(
        tiny_bert(),
        [("a", "lora", {}), ("b", "ia3", {}), ("c", "bitfit", {}), ("d", "loreft", {"positions": "l1"})],
    )
    batch = make_batch("bert")
    check_rows(model, lambda: run("bert", model, batch), ["d", "a", None, "c", "b", "a"])


@pytest.mark.parametrize("grad", [False, True])
def test_grad_and_no_grad_give_the_same_rows_and_the_state_is_left_as_it_was(grad):
    model = add_adapters(tiny_vit(), method_adapters("vit", "lora"))
    zp.set_active_adapter(model, "b")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    batch = make_batch("vit")
    with torch.no_grad():
        before = run("vit", model, batch)
        expected = one_adapter_at_a_time(model, lambda: run("vit", model, batch), MIXED_ROWS)
    with torch.set_grad_enabled(grad), zp.mixed(model, MIXED_ROWS):
        mixed = run("vit", model, batch)
    if grad:
        mixed.square().sum().backward()  # the active adapter "b" has rows in the batch: its tensors get gradients
        assert trainable and all(model.get_parameter(n).grad is not None for n in trainable)
    torch.testing.assert_close(mixed.detach(), expected, atol=1e-5, rtol=1e-5)
    assert zp.active_adapter(model) == "b"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert all(module.row_groups is None for _, module in adapter_modules(model))
    with torch.no_grad():
        assert torch.equal(run("vit", model, batch), before)


def test_adapters_loaded_from_disk_mix(tmp_path):
    base = tiny_bert()
    model = add_adapters(copy.deepcopy(base), [("a", "lora", {}), ("b", "dora", {"r": 2}), ("c", "ia3", {})])
    for name in "abc":
        zp.save_adapter(model, tmp_path / name, adapter_name=name)
    loaded = base
    for name in "abc":
        zp.load_adapter(loaded, tmp_path / name, adapter_name=name)
    batch = make_batch("bert")
    names = ["c", None, "a", "b", "b", "a"]
    mixed = check_rows(loaded, lambda: run("bert", loaded, batch), names)
    with torch.no_grad(), zp.mixed(model, names):
        torch.testing.assert_close(mixed, run("bert", model, batch), atol=1e-6, rtol=1e-6)


# -- nn.MultiheadAttention, sequence-first, with a padding mask and a per-head attention mask -------------
HIDDEN, HEADS = 8, 2


class SequenceFirstBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(HIDDEN, HEADS)  # batch_first=False: (tokens, batch, hidden)
        self.fc1, self.fc2 = nn.Linear(HIDDEN, 16), nn.Linear(16, HIDDEN)

    def forward(self, x, padding, scores):
        x = x + self.attn(x, x, x, key_padding_mask=padding, attn_mask=scores, need_weights=False)[0]
        return x + self.fc2(torch.relu(self.fc1(x)))


class SequenceFirstToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([SequenceFirstBlock() for _ in range(2)])
        self.head = nn.Linear(HIDDEN, 3)

    def forward(self, x, padding, scores):
        for block in self.blocks:
            x = block(x, padding, scores)
        return self.head(x.mean(0))


TOY_STRUCTURE = Structure(
    name="toy-sequence-first-mha",
    blocks=r"blocks\.\d+",
    attention="attn",
    attention_kind="mha",
    qkv="attn",
    attention_out="fc1",
    ffn_in="fc1",
    ffn_out="fc2",
    heads=("head",),
)
MULTIHEAD_OPTIONS = {
    "bitfit": {},
    "dora": {"r": 2, "target_modules": ["attn[q,v]"]},
    "ia3": {"target_modules": ["attn[k,v]", "fc2"]},
    "kadaptation": {"n": 2, "r": 2, "target_modules": ["attn[q,v]"]},
    "lora": {"r": 2, "target_modules": ["attn[q,k,v]"]},
    "prefix": {"num_virtual_tokens": 2},
}


@pytest.mark.parametrize("method", sorted(MULTIHEAD_OPTIONS))
def test_sequence_first_multihead_attention_is_called_once_per_adapter(method):
    torch.manual_seed(0)
    model = SequenceFirstToy().eval()
    options = MULTIHEAD_OPTIONS[method]
    other = dict(options, num_virtual_tokens=3) if method == "prefix" else options
    add_adapters(
        model,
        [(n, method, dict(o, structure=TOY_STRUCTURE)) for n, o in (("a", options), ("b", other), ("c", options))],
    )
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 6, HIDDEN, generator=generator)
    padding = torch.zeros(6, 5)
    padding[2, 3:] = float("-inf")  # additive, as the attention mask
    scores = torch.randn(6 * HEADS, 5, 5, generator=generator)  # one additive mask per row and head
    check_rows(model, lambda: model(x, padding, scores), MIXED_ROWS)


# -- zoo's TaskModel: each adapter's own head -------------------------------------------------------
def test_task_model_rows_use_their_adapters_heads():
    from zoo.catalog.backbones import create_backbone
    from zoo.tasks.heads import TaskModel

    torch.manual_seed(0)
    model = TaskModel(create_backbone("bert_base", scale="tiny"), "classification", 4).eval()
    add_adapters(model, [("a", "lora", {}), ("b", "linear", {}), ("c", "adapter", {})])
    assert set(zp.list_adapters(model)) == {"a", "b", "c"}
    assert {"a", "b", "c"} <= set(model.head.modules_to_save)
    batch = model.backbone.collate(model.backbone.example_inputs(6))
    check_rows(model, lambda: model(batch), MIXED_ROWS)


def test_open_clip_task_model_mixes_multihead_adapters():
    pytest.importorskip("open_clip")
    from zoo.catalog.backbones import create_backbone
    from zoo.tasks.heads import TaskModel
    from zoo_domains.video_text.backbones import OPEN_CLIP_VIT

    torch.manual_seed(0)
    model = TaskModel(create_backbone("clip_vit_b32", scale="tiny", text_tower=False), "classification", 2).eval()
    add_adapters(
        model,
        [
            ("a", "lora", {"structure": OPEN_CLIP_VIT, "r": 2}),
            ("b", "prefix", {"structure": OPEN_CLIP_VIT, "num_virtual_tokens": 2}),
            ("c", "ia3", {"structure": OPEN_CLIP_VIT}),
        ],
    )
    # one frame per clip: the image tower's batch is the batch of clips (several frames would flatten into it)
    generator = torch.Generator().manual_seed(0)
    batch = model.backbone.collate([torch.rand(1, 3, 40, 48, generator=generator) for _ in range(6)])
    check_rows(model, lambda: model(batch), ["b", "a", None, "c", "b", "a"])


# -- refusals ------------------------------------------------------------------------------------
@pytest.fixture
def two_loras():
    return add_adapters(tiny_bert(), [("a", "lora", {}), ("b", "lora", {"r": 2})])


def test_unknown_adapter_is_refused_naming_the_known_ones(two_loras):
    with pytest.raises(ConfigError, match=r"no adapter named 'x'; adapters on this model: a, b \(None"):
        with zp.mixed(two_loras, ["a", "x"]):
            pass
    with pytest.raises(ConfigError, match="one adapter name \\(or None\\) per row"):
        with zp.mixed(two_loras, "a"):
            pass


def test_batch_size_mismatch_is_refused_and_the_model_is_left_usable(two_loras):
    batch = make_batch("bert")
    with pytest.raises(ConfigError, match="3 adapter names were given .* batch of 6 rows"):
        with torch.no_grad(), zp.mixed(two_loras, ["a", "b", None]):
            run("bert", two_loras, batch)
    assert all(module.row_groups is None for _, module in adapter_modules(two_loras))
    check_rows(two_loras, lambda: run("bert", two_loras, batch), MIXED_ROWS[:2] + ["b", "a", "b", None])


def test_merged_adapter_is_refused_until_unmerged(two_loras):
    zp.merge(two_loras, "a")
    with pytest.raises(ConfigError, match="'a' is merged into the base weights.*unmerge"):
        with zp.mixed(two_loras, ["a", "b"]):
            pass
    zp.unmerge(two_loras)
    with zp.mixed(two_loras, ["a", "b"]):
        pass


def test_full_fine_tuning_is_refused_saying_why():
    model = zp.apply(tiny_bert(), "full")
    with pytest.raises(ConfigError, match="full fine-tuning: it changed the base weights in place"):
        with zp.mixed(model, ["default", None]):
            pass


def test_rows_of_other_sequence_lengths_are_refused_saying_why():
    vpt = add_adapters(tiny_vit(), [("a", "vpt", {"num_prompts": 2}), ("b", "vpt", {"num_prompts": 3})])
    with pytest.raises(ConfigError, match=r"vpt at zoo_vpt .*\[2, 3\] prompt tokens.*same num_prompts"):
        with zp.mixed(vpt, ["a", "b"]):
            pass
    with pytest.raises(ConfigError, match=r"\[0, 2\] prompt tokens"):
        with zp.mixed(vpt, ["a", None]):
            pass
    prefix = add_adapters(tiny_bert(), [("a", "prefix", {"num_virtual_tokens": 2})])
    with pytest.raises(ConfigError, match="prefix .*numbers the positions from P.*same num_virtual_tokens"):
        with zp.mixed(prefix, ["a", None]):
            pass


def test_mixed_blocks_do_not_nest(two_loras):
    with zp.mixed(two_loras, ["a", "b"]):
        with pytest.raises(ConfigError, match="already running a mixed batch"):
            with zp.mixed(two_loras, ["b", "a"]):
                pass
