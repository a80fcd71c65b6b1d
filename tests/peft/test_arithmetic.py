"""Adapter arithmetic against dense references computed here: each input's ΔW is what the method's own
merge (merge_and_unload) adds to the base tensors, and the references combine those ΔW with their own
implementations of linear, TIES and DARE."""

import copy

import pytest
import torch
from torch import nn

import zoo.peft as zp
from tests.conftest import tiny_bert, tiny_vit
from tests.peft.method_checks import perturb_trainable
from zoo.errors import ConfigError
from zoo.peft.arithmetic import merge_adapter_dirs

IDS = torch.randint(0, 100, (3, 9), generator=torch.Generator().manual_seed(5))
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
TOKENS = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(7))


class TinyAttention(nn.Module):
    """An nn.MultiheadAttention block, which LoRA, DoRA and IA3 adapt through in_proj_weight slices."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        return self.out(self.attn(x, x, x, need_weights=False)[0])


def bert_out(model):
    return model(input_ids=IDS).logits


MODELS = {
    "bert": (tiny_bert, bert_out),
    "vit": (tiny_vit, lambda m: m(IMAGES)),
    "mha": (TinyAttention, lambda m: m(TOKENS)),
}


def adapted(base, method, seed, **options):
    """``base`` with adapter ``method``, every trainable tensor moved away from its start (heads too)."""
    model = copy.deepcopy(base)
    zp.apply(model, method, **options)
    perturb_trainable(model, seed=seed, std=0.3)
    return model


def saved(model, folder):
    zp.save_adapter(model, folder)
    return folder


def delta_of(base, model):
    """Every tensor's change under the method's own merge, in float64 (heads: the adapter's head)."""
    merged = zp.merge_and_unload(copy.deepcopy(model)).state_dict()
    return {key: merged[key].double() - value.double() for key, value in base.state_dict().items()}


def dense(base, deltas):
    model = copy.deepcopy(base)
    state = model.state_dict()
    model.load_state_dict({key: (state[key].double() + deltas[key]).to(state[key].dtype) for key in state})
    return model


def reloaded(base, merged, folder, task=None):
    merged.save(folder, task)
    model = copy.deepcopy(base)
    zp.load_adapter(model, folder)
    return model


def assert_outputs_equal(model, reference, forward=bert_out):
    with torch.no_grad():
        torch.testing.assert_close(forward(model), forward(reference), atol=1e-5, rtol=1e-5)


def linear_reference(deltas, weights):
    return {key: sum(w * d[key] for w, d in zip(weights, deltas)) for key in deltas[0]}


CASES = [
    ("bert", "lora", {"r": 4, "lora_alpha": 8}),
    ("bert", "lora", {"r": 3, "lora_alpha": 5, "use_rslora": True}),
    ("bert", "dora", {"r": 4, "lora_alpha": 8}),
    ("bert", "ia3", {}),
    ("vit", "lora", {"target_modules": ["qkv[q,v]", "patch_embed.proj"]}),  # fused slices and a Conv2d
    ("vit", "dora", {"target_modules": ["qkv[q,v]", "patch_embed.proj"]}),
    ("vit", "ia3", {"target_modules": ["qkv[k,v]", "fc2"], "feedforward_modules": ["fc2"]}),
    ("mha", "lora", {"target_modules": ["attn[q,v]"], "modules_to_save": []}),
    ("mha", "dora", {"target_modules": ["attn[q,v]"], "modules_to_save": []}),
    ("mha", "ia3", {"target_modules": ["attn[k,v]"], "modules_to_save": []}),
]


@pytest.mark.parametrize("kind, method, options", CASES, ids=[f"{k}-{m}-{'-'.join(o)}" for k, m, o in CASES])
def test_one_adapter_at_weight_one_comes_back_exactly(kind, method, options, tmp_path):
    build, forward = MODELS[kind]
    base = build()
    model = adapted(base, method, seed=1, **options)
    merged = merge_adapter_dirs(copy.deepcopy(base), [saved(model, tmp_path / "in")], [1.0])
    assert max(merged.errors.values(), default=0.0) < 1e-6
    assert_outputs_equal(merged.model, model, forward)
    assert_outputs_equal(reloaded(base, merged, tmp_path / "out"), model, forward)


def test_disjoint_layers_merge_to_their_union(bert, tmp_path):
    first = adapted(bert, "lora", 1, r=2, target_modules=["query"], modules_to_save=[])
    second = adapted(bert, "lora", 2, r=3, lora_alpha=7, target_modules=["value"], modules_to_save=[])
    merged = merge_adapter_dirs(
        copy.deepcopy(bert), [saved(first, tmp_path / "q"), saved(second, tmp_path / "v")], [1.0, 1.0]
    )
    assert merged.rank == 5
    union = dense(bert, linear_reference([delta_of(bert, first), delta_of(bert, second)], [1.0, 1.0]))
    assert_outputs_equal(reloaded(bert, merged, tmp_path / "out"), union)


def test_disjoint_slices_of_a_fused_projection_merge_to_their_union(vit, tmp_path):
    options = {"modules_to_save": [], "r": 2}
    first, second = (
        adapted(vit, "lora", 1, target_modules=["qkv[q]"], **options),
        adapted(vit, "lora", 2, target_modules=["qkv[v]"], **options),
    )
    merged = merge_adapter_dirs(
        copy.deepcopy(vit), [saved(first, tmp_path / "q"), saved(second, tmp_path / "v")], [1, 1]
    )
    assert all(target.endswith("qkv[q,v]") for target in merged.config.target_modules)
    union = dense(vit, linear_reference([delta_of(vit, first), delta_of(vit, second)], [1.0, 1.0]))
    assert_outputs_equal(reloaded(vit, merged, tmp_path / "out"), union, MODELS["vit"][1])


@pytest.mark.parametrize(
    "method, options",
    [
        ("lora", [{"r": 2, "use_rslora": True, "lora_alpha": 3}, {"r": 4}]),
        ("dora", [{"r": 2}, {"r": 3, "lora_alpha": 6}]),  # exact: the magnitude goes into G, the rest is rank 5
        ("ia3", [{}, {}]),
    ],
)
def test_linear_matches_the_dense_reference(bert, method, options, tmp_path):
    weights = [0.7, -0.4]
    models = [adapted(bert, method, seed, modules_to_save=[], **o) for seed, o in enumerate(options)]
    folders = [saved(m, tmp_path / f"in{i}") for i, m in enumerate(models)]
    merged = merge_adapter_dirs(copy.deepcopy(bert), folders, weights)
    reference = dense(bert, linear_reference([delta_of(bert, m) for m in models], weights))
    assert_outputs_equal(merged.model, reference)
    assert_outputs_equal(reloaded(bert, merged, tmp_path / "out"), reference)


def ties_reference(deltas, weights, density):
    """TIES-Merging (Yadav et al. 2023) on one tensor: trim, elect, disjoint mean."""
    weighted = []
    for w, delta in zip(weights, deltas):
        keep = max(1, round(density * delta.numel()))
        threshold = delta.abs().flatten().kthvalue(delta.numel() - keep + 1).values
        weighted.append(w * torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta)))
    sign = torch.where(sum(weighted) >= 0, 1.0, -1.0).double()
    total, count = torch.zeros_like(sign), torch.zeros_like(sign)
    for entry in weighted:
        agrees = (entry != 0) & (torch.sign(entry) == sign)
        total += torch.where(agrees, entry, torch.zeros_like(entry))
        count += agrees
    return total / count.clamp(min=1)


def dare_reference(deltas, weights, density, generator, then_ties):
    """DARE (Yu et al. 2023): drop with probability 1 - density, rescale by 1/density; then sum or TIES."""
    rescaled = []
    for delta in deltas:
        keep = torch.rand(delta.shape, generator=generator, dtype=torch.float64) < density
        rescaled.append(torch.where(keep, delta / density, torch.zeros_like(delta)))
    if then_ties:
        return ties_reference(rescaled, weights, 1.0)
    return sum(w * d for w, d in zip(weights, rescaled))


def adapted_layers(deltas):
    """The weights the adapters change, in the order merges go through layers (sorted by path)."""
    return sorted(key for key in deltas[0] if key.endswith(".weight") and any(bool(d[key].any()) for d in deltas))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_ties_matches_a_reference_implementation(bert, method, tmp_path):
    weights, density = [1.0, 0.5, 0.8], 0.3
    models = [adapted(bert, method, seed, r=2, modules_to_save=[]) for seed in range(3)]
    folders = [saved(m, tmp_path / f"in{i}") for i, m in enumerate(models)]
    # rank 32 (the layers' full rank): the refactoring is exact and only the rule is compared
    merged = merge_adapter_dirs(copy.deepcopy(bert), folders, weights, "ties", density=density, rank=32)
    deltas = [delta_of(bert, m) for m in models]
    expected = {key: torch.zeros_like(value) for key, value in deltas[0].items()}
    for key in adapted_layers(deltas):
        expected[key] = ties_reference([d[key] for d in deltas], weights, density)
    assert_outputs_equal(reloaded(bert, merged, tmp_path / "out"), dense(bert, expected))


@pytest.mark.parametrize("rule", ["dare_linear", "dare_ties"])
def test_dare_matches_a_reference_implementation_with_the_same_seed(bert, rule, tmp_path):
    weights, density, seed = [0.6, 0.9], 0.5, 7
    models = [adapted(bert, "lora", s, r=2, modules_to_save=[]) for s in range(2)]
    folders = [saved(m, tmp_path / f"in{i}") for i, m in enumerate(models)]
    merged = merge_adapter_dirs(copy.deepcopy(bert), folders, weights, rule, density=density, rank=32, seed=seed)
    deltas = [delta_of(bert, m) for m in models]
    generator = torch.Generator().manual_seed(seed)
    expected = {key: torch.zeros_like(value) for key, value in deltas[0].items()}
    for key in adapted_layers(deltas):
        expected[key] = dare_reference([d[key] for d in deltas], weights, density, generator, rule == "dare_ties")
    assert_outputs_equal(reloaded(bert, merged, tmp_path / "out"), dense(bert, expected))
    other = merge_adapter_dirs(copy.deepcopy(bert), folders, weights, rule, density=density, rank=32, seed=seed + 1)
    assert not torch.allclose(bert_out(other.model), bert_out(merged.model))


def test_svd_cuts_the_linear_update_to_the_largest_input_rank(bert, tmp_path):
    weights = [0.5, 0.5]
    models = [adapted(bert, "lora", seed, r=r, modules_to_save=[]) for seed, r in enumerate((2, 4))]
    folders = [saved(m, tmp_path / f"in{i}") for i, m in enumerate(models)]
    merged = merge_adapter_dirs(copy.deepcopy(bert), folders, weights, "svd")
    assert merged.rank == 4
    combined = linear_reference([delta_of(bert, m) for m in models], weights)
    written = delta_of(bert, merged.model)
    for key in adapted_layers([combined]):
        u, s, vh = torch.linalg.svd(combined[key])
        truncated = (u[:, :4] * s[:4]) @ vh[:4]
        torch.testing.assert_close(written[key], truncated, atol=1e-5, rtol=0)
        error = (s[4:] ** 2).sum().sqrt() / s.square().sum().sqrt()
        assert merged.errors[key.removesuffix(".weight")] == pytest.approx(float(error), rel=1e-4)
    # the default rank of linear is the sum of the input ranks, which keeps the update exactly
    assert merge_adapter_dirs(copy.deepcopy(bert), folders, weights).rank == 6


def test_each_task_keeps_its_own_head(tmp_path):
    three, two = tiny_bert(num_labels=3), tiny_bert(num_labels=2)  # same seed: the same encoder
    first, second = adapted(three, "lora", 1, r=2), adapted(two, "lora", 2, r=2)
    folders = [saved(first, tmp_path / "topics"), saved(second, tmp_path / "sentiment")]
    merged = merge_adapter_dirs(copy.deepcopy(three), folders, [0.5, 0.5])
    assert not merged.shared_head and set(merged.heads) == {"topics", "sentiment"}
    with pytest.raises(ConfigError, match="one head per task"):
        merged.save(tmp_path / "no-task")
    deltas = [delta_of(three, first), delta_of(two, second)]
    encoder = {key: 0.5 * deltas[0][key] + 0.5 * deltas[1][key] for key in deltas[0] if "classifier" not in key}
    for base, delta, task in ((three, deltas[0], "topics"), (two, deltas[1], "sentiment")):
        # the combined encoder update with this task's own head
        expected = {**encoder, **{key: value for key, value in delta.items() if "classifier" in key}}
        assert_outputs_equal(reloaded(base, merged, tmp_path / task, task), dense(base, expected))


def test_heads_of_one_task_must_agree(bert, tmp_path):
    folders = [saved(adapted(bert, "lora", seed, r=2), tmp_path / f"run{seed}" / "adapter") for seed in range(2)]
    with pytest.raises(ConfigError, match="task 'sst2'.*different heads"):
        merge_adapter_dirs(copy.deepcopy(bert), folders, [0.5, 0.5], tasks=["sst2", "sst2"])
    model = adapted(bert, "lora", 0, r=2)
    same = [saved(model, tmp_path / "a"), saved(model, tmp_path / "b")]
    merged = merge_adapter_dirs(copy.deepcopy(bert), same, [0.5, 0.5], tasks=["sst2", "sst2"])
    assert merged.shared_head
    assert_outputs_equal(reloaded(bert, merged, tmp_path / "out"), model)  # the average of twice the same update


def test_what_cannot_be_merged_is_refused_with_the_reason(bert, tmp_path):
    lora = saved(adapted(bert, "lora", 0, r=2), tmp_path / "lora")
    dora = saved(adapted(bert, "dora", 0, r=2), tmp_path / "dora")
    ia3 = saved(adapted(bert, "ia3", 0), tmp_path / "ia3")
    bitfit = saved(adapted(bert, "bitfit", 0), tmp_path / "bitfit")
    refusals = [
        (([lora, dora], [0.5, 0.5], "linear"), {}, "different methods"),
        (([bitfit], [1.0], "linear"), {}, "bitfit adapters cannot be merged"),
        (([ia3, ia3], [0.5, 0.5], "ties"), {"density": 0.5}, "ia3 merges with method linear only"),
        (([lora, lora], [0.5, 0.5], "tie"), {}, "unknown merge method 'tie'. Did you mean 'ties'"),
        (([lora, lora], [0.5], "linear"), {}, "1 weight.*for 2 adapter"),
        (([lora, lora], [0.5, 0.5], "ties"), {}, "ties needs a density"),
        (([lora, lora], [0.5, 0.5], "dare_ties"), {"density": 0.0}, r"outside \(0, 1\]"),
        (([lora, lora], [0.5, 0.5], "dare_linear"), {"density": 1.5}, r"outside \(0, 1\]"),
        (([lora, lora], [0.5, 0.5], "linear"), {"density": 0.5}, "density applies to"),
        (([lora, lora], [0.5, 0.5], "linear"), {"rank": 0}, "rank must be an integer >= 1"),
    ]
    for args, options, message in refusals:
        with pytest.raises(ConfigError, match=message):
            merge_adapter_dirs(copy.deepcopy(bert), *args, **options)
