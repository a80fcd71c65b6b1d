"""Ladder side-tuning: the backbone keeps no activations for backward and gets no gradient, the side
network computes the ladder of the paper (checked against a hand-written loop over the backbone's own
hidden states), the gates do what they say, save/load, merge and mixed batches, sequence-first blocks."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo.peft as zp
from tests.conftest import tiny_bert, tiny_vit
from tests.peft.method_checks import check_save_load_exact, logits, perturb_trainable
from tests.peft.test_mixed_batch import check_rows, make_batch, run
from zoo.errors import ConfigError
from zoo.peft.structure import Structure


def bert_inputs():
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 100, (3, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2])}


def vit_inputs():
    generator = torch.Generator().manual_seed(4)
    return {"images": torch.randn(3, 3, 32, 32, generator=generator), "labels": torch.tensor([0, 1, 2])}


SETUPS = {
    "bert": (tiny_bert, bert_inputs, lambda m: m.bert.encoder.layer),
    "vit": (tiny_vit, vit_inputs, lambda m: m.blocks),
}


def side_network(model, name="default"):
    return model.zoo_lst.side_network[name]


# -- memory: the backbone is not in the autograd graph ----------------------------------------------------
def saved_tensors(model, blocks, loss_of):
    """How many tensors autograd saves for backward while the blocks' own forward runs, and in all."""
    inside, counts = [False], {"in_blocks": 0, "all": 0, "bytes": 0}

    def pack(tensor):
        counts["all"] += 1
        counts["bytes"] += tensor.numel() * tensor.element_size()
        counts["in_blocks"] += inside[0]
        return tensor

    handles = []
    for block in blocks:  # after the method's own pre-hooks, before its forward hooks: the block alone
        handles.append(block.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True)))
        handles.append(block.register_forward_hook(lambda *_: inside.__setitem__(0, False), prepend=True))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_of()
    loss.backward()
    for handle in handles:
        handle.remove()
    return counts


@pytest.mark.parametrize("kind", sorted(SETUPS))
def test_backbone_saves_no_activations_and_gets_no_gradient(kind):
    make, inputs, blocks_of = SETUPS[kind]
    batch = inputs()
    counts = {}
    for method in ("lora", "lst"):
        model = zp.apply(make(), method).train()
        backbone = {n: p for n, p in model.named_parameters() if not p.requires_grad}
        counts[method] = saved_tensors(
            model, list(blocks_of(model)), lambda m=model: F.cross_entropy(logits(m, batch), batch["labels"])
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert all(p.grad is not None for p in trainable)
        if method == "lst":
            assert all(p.grad is None for p in backbone.values()), "a backbone weight got a gradient"
    assert counts["lora"]["in_blocks"] > 20, "the counter sees what the blocks save when they are backpropagated"
    assert counts["lst"]["in_blocks"] == 0, "the backbone's blocks kept activations for backward"
    assert counts["lst"]["bytes"] < counts["lora"]["bytes"] / 2


# -- the side network against a hand-written ladder -----------------------------------------------------------
def layer_norm(x, norm):
    mean, variance = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias


def linear(x, layer):
    return x @ layer.weight.T + layer.bias


def side_block(x, block, key_padding):
    """Pre-norm attention and GELU MLP, written out: softmax(q k^T / sqrt(d_head) + mask) v per head."""
    batch, tokens, _ = x.shape
    normed = layer_norm(x, block.attention_norm)
    q, k, v = (linear(normed, p).view(batch, tokens, block.heads, -1) for p in (block.query, block.key, block.value))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if key_padding is not None:
        scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
    attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(batch, tokens, -1)
    x = x + linear(attended, block.attention_out)
    hidden = linear(layer_norm(x, block.ffn_norm), block.ffn_in)
    return x + linear(0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))), block.ffn_out)


def ladder_reference(network, hidden_states, ladders, temperature, key_padding=None):
    """s_0 = D_0(h_0); s_i = g_i(mu_i D_i(h_i) + (1 - mu_i) s_{i-1}) at the ladder blocks; U(LN(s))."""
    state = linear(hidden_states[0], network.down[0])
    for position, block in enumerate(ladders):
        mu = 1 / (1 + math.exp(-network.gate_alpha[position].item() / temperature))
        mixed = mu * linear(hidden_states[block + 1], network.down[position + 1]) + (1 - mu) * state
        state = side_block(mixed, network.blocks[position], key_padding)
    return linear(layer_norm(state, network.norm), network.up)


def vit_hidden_states(model, images):
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    states = [x]
    for block in model.blocks:
        states.append(block(states[-1]))
    return states


@pytest.mark.parametrize("layers", [None, [1]])
@pytest.mark.parametrize("kind", sorted(SETUPS))
def test_side_network_computes_the_ladder(kind, layers):
    make, inputs, _ = SETUPS[kind]
    base, batch = make(), inputs()
    model = zp.apply(copy.deepcopy(base), "lst", reduction_factor=4, gate_temperature=0.5, layers=layers)
    perturb_trainable(model, seed=1, std=0.3)  # gates away from 0.5, layer norms away from (1, 0)
    network, ladders = side_network(model), layers or [0, 1]
    with torch.no_grad():
        if kind == "bert":
            hidden = base.bert(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
            expected = ladder_reference(network, hidden.hidden_states, ladders, 0.5, batch["attention_mask"] == 0)
            actual = model.bert(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        else:
            expected = base.norm(ladder_reference(network, vit_hidden_states(base, batch["images"]), ladders, 0.5))
            actual = model.forward_features(batch["images"])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def positions(values, among):
    """Where each of ``values`` lies in ``among`` (every value of ``among`` distinct)."""
    return [int((among == value).nonzero()[0]) for value in values]


def test_pruned_init_keeps_the_backbone_channels_of_largest_weights():
    model = tiny_vit()
    with torch.no_grad():  # distinct biases tell which backbone channel each side channel came from
        for block in model.blocks:
            for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                layer.bias.copy_(torch.arange(layer.bias.numel()) * 1e-3 + 1.0)
    zp.apply(model, "lst", reduction_factor=2)
    network = side_network(model)
    for side, block in zip(network.blocks, model.blocks):
        q_weight, fc1, fc2 = block.attn.qkv.weight[:32], block.mlp.fc1, block.mlp.fc2
        channels = positions(side.ffn_out.bias, fc2.bias)  # residual channels: 16 of 32
        units = positions(side.ffn_in.bias, fc1.bias)  # MLP units: 64 of 128
        rows = positions(side.query.bias, block.attn.qkv.bias[:32])  # 4 of each head's 8 q channels
        assert len(channels) == 16 and channels == sorted(channels) and len(units) == 64 and units == sorted(units)
        assert [row // 8 for row in rows] == [head for head in range(4) for _ in range(4)]
        assert torch.equal(side.ffn_in.weight, fc1.weight[units][:, channels])
        assert torch.equal(side.ffn_out.weight, fc2.weight[channels][:, units])
        assert torch.equal(side.query.weight, q_weight[rows][:, channels])
        # the units kept are those of largest L1 norm (fc1 rows and fc2 columns, on the kept channels)
        scores = fc1.weight[:, channels].abs().sum(1) + fc2.weight[channels].abs().sum(0)
        dropped = sorted(set(range(128)) - set(units))
        assert scores[units].min() >= scores[dropped].max()
    residual = sum(
        b.attn.qkv.weight.abs().sum(0)
        + b.mlp.fc1.weight.abs().sum(0)
        + b.attn.proj.weight.abs().sum(1)
        + b.mlp.fc2.weight.abs().sum(1)
        for b in model.blocks
    )
    channels = positions(network.blocks[0].ffn_out.bias, model.blocks[0].mlp.fc2.bias)
    assert residual[channels].min() >= residual[sorted(set(range(32)) - set(channels))].max()
    random = side_network(zp.apply(copy.deepcopy(model), "lst", adapter_name="r", init="random"), "r").blocks[0]
    assert not any((model.blocks[0].mlp.fc1.bias == value).any() for value in random.ffn_in.bias)


# -- gates --------------------------------------------------------------------------------------------------
def later_blocks_changed(model):
    """Change the backbone from block 0's output on: h_1 and h_2 move, h_0 (the embeddings) does not."""
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight.add_(0.5)


@pytest.mark.parametrize(("alpha", "ladder_used"), [(-1e4, False), (0.0, True)])
def test_a_closed_gate_ignores_its_ladder(alpha, ladder_used):
    model, batch = zp.apply(tiny_bert(), "lst"), bert_inputs()
    network = side_network(model)
    torch.testing.assert_close(network.gates(), torch.full((2,), 0.5))
    with torch.no_grad():
        network.gate_alpha.fill_(alpha)  # mu = sigmoid(-1e5) = 0: s_i = g_i(s_{i-1})
        before = logits(model, batch)
        later_blocks_changed(model)
        after = logits(model, batch)
    assert torch.equal(before, after) != ladder_used


def test_an_open_gate_ignores_the_side_state():
    model, batch = zp.apply(tiny_bert(), "lst"), bert_inputs()
    network = side_network(model)
    with torch.no_grad():
        network.gate_alpha.fill_(1e4)  # mu = 1: s_i = g_i(D_i(h_i)), whatever s_{i-1} was
        before = logits(model, batch)
        network.down[0].weight.add_(1.0)
        network.blocks[0].ffn_out.bias.add_(1.0)
        assert torch.equal(logits(model, batch), before)
        network.blocks[1].ffn_out.bias.add_(1.0)
        assert not torch.equal(logits(model, batch), before)


# -- adapters: save/load, merge, several, mixed batches ------------------------------------------------------
def test_save_load_round_trip_with_options(tmp_path):
    base, batch = tiny_vit(), vit_inputs()
    model = zp.apply(copy.deepcopy(base), "lst", reduction_factor=4, init="random", layers=[1], gate_temperature=0.2)
    perturb_trainable(model, seed=2)
    check_save_load_exact(base, model, batch, tmp_path / "adapter")
    config, tensors = zp.read_adapter_dir(tmp_path / "adapter")
    assert config["zoo"]["method"] == "lst" and config["zoo"]["config"]["layers"] == [1]
    assert "base_model.model.zoo_lst.side_network.gate_alpha" in tensors
    assert tensors["base_model.model.zoo_lst.side_network.down.1.weight"].shape == (8, 32)
    assert not any(key.startswith("base_model.model.blocks.") for key in tensors)


def test_merge_is_refused_saying_why():
    model = zp.apply(tiny_bert(), "lst")
    with pytest.raises(ConfigError, match=r"uses lst, which adds computation that cannot be folded"):
        zp.merge(model)
    with pytest.raises(ConfigError, match=r"uses lst"):
        zp.merge_and_unload(model)


def test_two_side_networks_and_unload_leave_the_base_model():
    base, batch = tiny_bert(), bert_inputs()
    model = zp.apply(copy.deepcopy(base), "lst", adapter_name="a")
    zp.apply(model, "lst", adapter_name="b", reduction_factor=2)
    zp.set_active_adapter(model, "a")
    assert {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad and "zoo_lst" in n} == {"a"}
    zp.unload(model)
    assert not hasattr(model, "zoo_lst")
    with torch.no_grad():
        assert torch.equal(logits(model, batch), logits(base, batch))


def test_mixed_batch_rows_of_lst_lora_and_the_base_model():
    model = zp.apply(tiny_bert(), "lst", adapter_name="a")
    zp.apply(model, "lora", adapter_name="b")
    zp.apply(model, "lst", adapter_name="c", layers=[0])
    for seed, name in enumerate("abc"):
        zp.set_active_adapter(model, name)
        perturb_trainable(model, seed=seed, std=0.2)
    batch = make_batch("bert")
    check_rows(model, lambda: run("bert", model, batch), ["c", "a", None, "b", "a", "c"])


# -- sequence-first blocks, options and refusals --------------------------------------------------------------
class EncoderStack(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first) for _ in range(2)
        )
        self.head = nn.Linear(16, 3)

    def forward(self, x, padding):
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        return self.head(x.mean(1 if self.batch_first else 0))


TORCH_ENCODER = Structure(
    name="toy-torch-encoder",
    blocks=r"layers\.\d+",
    attention="self_attn",
    attention_kind="mha",
    qkv="self_attn",
    attention_out="self_attn.out_proj",
    ffn_in="linear1",
    ffn_out="linear2",
    heads=("head",),
)


def test_sequence_first_blocks_compute_what_batch_first_ones_do():
    torch.manual_seed(0)
    batch_first = EncoderStack(batch_first=True)
    sequence_first = EncoderStack(batch_first=False)
    sequence_first.load_state_dict(batch_first.state_dict())
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[1, 3:] = True
    outputs = []
    for model, inputs in ((batch_first, x), (sequence_first, x.transpose(0, 1))):
        torch.manual_seed(5)  # the same ladders and U (nn.Linear's init) for both
        zp.apply(model, "lst", structure=TORCH_ENCODER, reduction_factor=2).train()  # train: torch's fast path off
        perturb_trainable(model, seed=3, std=0.2)
        outputs.append(model(inputs, padding))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    with zp.disabled(batch_first):
        assert not torch.allclose(outputs[0], batch_first(x, padding), atol=1e-3)


def test_bad_options_and_unfit_backbones_are_refused():
    with pytest.raises(ConfigError, match=r"reduction_factor=0.5 is not allowed.*>= 1"):
        zp.apply(tiny_bert(), "lst", reduction_factor=0.5)
    with pytest.raises(ConfigError, match=r"target_modules=\['query'\] is not used.*layers"):
        zp.apply(tiny_bert(), "lst", target_modules=["query"])
    with pytest.raises(ConfigError, match=r"num_heads=3 does not divide the backbone's attention width 32"):
        zp.apply(tiny_bert(), "lst", num_heads=3)
    from transformers import T5Config, T5Model

    from zoo_domains.text.backbones import T5_STRUCTURE

    t5 = T5Model(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(ConfigError, match=r"lst: the blocks of T5Model lie in several stacks"):
        zp.apply(t5, "lst", structure=T5_STRUCTURE)
    assert not hasattr(t5, "zoo_lst")


def test_an_unreadable_attention_mask_is_refused_saying_which_shapes_are_read():
    model = EncoderStack(batch_first=True)
    zp.apply(model, "lst", structure=TORCH_ENCODER)
    with pytest.raises(RuntimeError, match=r"mask of shape \(3, 4\) cannot be read for 5 tokens"):
        model(torch.randn(3, 5, 16), torch.zeros(3, 4, dtype=torch.bool))
