"""Video-text domain: CLIP over frames (checked against open_clip itself), local checkpoints
in open_clip's format, offline failure, MSR-VTT layouts and bad input, the retrieval loss
against a hand-written reference, and PEFT on both towers."""

from __future__ import annotations

import json
import math
import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo.peft as zp
from zoo.catalog.backbones import PretrainedUnavailable, create_backbone
from zoo.catalog.datasets import DataError, load_dataset
from zoo.tasks.heads import TaskModel
from zoo_domains.video_text.backbones import OPEN_CLIP_VIT, TINY_CONFIG
from zoo_domains.video_text.clips import read_clip, sample_indices
from zoo_domains.video_text.data import CATEGORIES, make_fixture, synthetic_clip
from zoo_domains.video_text.tasks import RetrievalModel, Temperature, contrastive_loss, retrieval_evaluate


def tiny(**options):
    torch.manual_seed(0)
    return create_backbone("clip_vit_b32", scale="tiny", **options).eval()


@pytest.fixture
def msrvtt(tmp_path):
    folder = tmp_path / "msrvtt"
    make_fixture(folder)
    return folder


# -- backbone --------------------------------------------------------------------------------------
def test_features_are_open_clip_frame_embeddings_and_pool_ignores_padding():
    import open_clip
    from PIL import Image

    backbone = tiny()
    generator = torch.Generator().manual_seed(0)
    long_clip = F.interpolate(torch.rand(3, 3, 6, 8, generator=generator), size=(40, 48), mode="bilinear")
    long_clip = (long_clip * 255).round() / 255  # exact in uint8, for PIL
    short_clip = long_clip[:2].flip(0)
    batch = backbone.collate([long_clip, short_clip])
    assert batch["frame_mask"].tolist() == [[True] * 3, [True, True, False]]
    # open_clip's own eval transform on PIL images (bicubic resize, centre crop, normalise)
    transform = open_clip.image_transform(32, is_train=False)
    reference = torch.stack(
        [transform(Image.fromarray((f.permute(1, 2, 0) * 255).round().byte().numpy())) for f in long_clip]
    )
    assert torch.allclose(batch["pixel_values"][0], reference, atol=0.03)  # within a uint8 step
    with torch.no_grad():
        features = backbone(batch)
        pooled = backbone.pool(features, batch)
        frames = backbone.clip.encode_image(batch["pixel_values"][0])
    assert features.shape == (2, 3, TINY_CONFIG["embed_dim"])
    assert torch.allclose(features[0], frames, atol=1e-5)
    assert torch.allclose(pooled[0], frames.mean(0), atol=1e-5)
    assert torch.allclose(pooled[1], frames[:2].mean(0), atol=1e-5)  # padding frame left out


def test_text_uses_open_clips_tokenizer_and_text_tower():
    import open_clip

    backbone = tiny()
    captions = ["a man is singing on a stage", "a dog runs"]
    batch = backbone.collate([(torch.rand(1, 3, 32, 32), c) for c in captions])
    tokens = open_clip.tokenize(captions, context_length=16)
    assert torch.equal(batch["input_ids"], tokens)
    with torch.no_grad():
        assert torch.allclose(backbone.encode_text(batch), backbone.clip.encode_text(tokens), atol=1e-6)


def test_collate_rejects_bad_frames():
    backbone = tiny()
    with pytest.raises(ValueError, match=r"\(F, C, H, W\)"):
        backbone.collate([torch.rand(3, 32, 32)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        backbone.collate([torch.rand(2, 3, 32, 32) * 3])
    with pytest.raises(ValueError, match="mix"):
        backbone.collate([torch.rand(2, 3, 32, 32), (torch.rand(2, 3, 32, 32), "a caption")])
    with pytest.raises(ValueError, match="strings"):
        backbone.collate([(torch.rand(2, 3, 32, 32), 7)])


def test_text_tower_can_be_dropped_for_video_tasks():
    backbone = tiny(text_tower=False)
    assert not any(n.startswith("clip.transformer.") for n, _ in backbone.named_parameters())
    batch = backbone.collate(backbone.example_inputs(2))
    assert backbone(batch).shape[0] == 2
    with pytest.raises(ValueError, match="text tower"):
        RetrievalModel(backbone)


# -- pretrained weights ----------------------------------------------------------------------------
def _write_open_clip_folder(folder, clip, weights_name):
    from safetensors.torch import save_file

    folder.mkdir()
    config = {"model_cfg": TINY_CONFIG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    if weights_name.endswith(".safetensors"):
        save_file(state, str(folder / weights_name))
    else:
        torch.save(state, folder / weights_name)
    return folder / weights_name


@pytest.mark.parametrize(
    "weights_name,pass_file", [("open_clip_model.safetensors", False), ("open_clip_pytorch_model.bin", True)]
)
def test_local_checkpoint_in_open_clip_format_loads(tmp_path, weights_name, pass_file):
    import open_clip

    writer = tiny()
    with torch.no_grad():
        writer.clip.logit_scale.fill_(3.0)  # something a fresh model would not have
    weights = _write_open_clip_folder(tmp_path / "clip", writer.clip, weights_name)
    loaded = create_backbone("clip_vit_b32", pretrained=weights if pass_file else weights.parent).eval()
    assert loaded.mean.flatten().tolist() == [0.5, 0.5, 0.5]  # preprocess_cfg honoured
    # open_clip's own reader of the same folder gives the same weights
    reference = open_clip.create_model(f"local-dir:{weights.parent}").eval()
    pixels = torch.rand(2, 3, 32, 32)
    tokens = open_clip.tokenize(["a red square", "a blue square"], context_length=16)
    with torch.no_grad():
        for model in (writer.clip, reference):
            assert torch.allclose(loaded.clip.encode_image(pixels), model.encode_image(pixels), atol=1e-6)
            assert torch.allclose(loaded.clip.encode_text(tokens), model.encode_text(tokens), atol=1e-6)
    assert loaded.clip.logit_scale.item() == 3.0


_payload_ran = []


def _payload():
    _payload_ran.append(True)
    return {}


class _Payload:
    def __reduce__(self):
        return (_payload, ())


def test_checkpoint_with_pickled_code_is_refused_not_run(tmp_path):
    folder = tmp_path / "clip"
    weights = _write_open_clip_folder(folder, tiny().clip, "open_clip_pytorch_model.bin")
    torch.save({"state_dict": torch.load(weights, weights_only=True), "extra": _Payload()}, weights)
    with pytest.raises(PretrainedUnavailable, match="holds more than tensors"):
        create_backbone("clip_vit_b32", pretrained=weights)
    assert not _payload_ran


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    other = dict(TINY_CONFIG, embed_dim=16)
    torch.manual_seed(0)
    import open_clip

    clip = open_clip.CLIP(**other)
    weights = tmp_path / "other.bin"
    torch.save(clip.state_dict(), weights)  # no config beside it: read as ViT-B-32, which it is not
    with pytest.raises(PretrainedUnavailable, match="does not fit ViT-B-32.*open_clip_config.json"):
        create_backbone("clip_vit_b32", pretrained=weights)


def test_offline_pretrained_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailable) as error:
        create_backbone("clip_vit_b32", pretrained=True, cache_dir=tmp_path)
    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message and "pretrained=/path" in message and "laion2b_s34b_b79k" in message


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(PretrainedUnavailable, match="is unreachable"):
        create_backbone("clip_vit_b32.openai", pretrained=True, cache_dir=tmp_path)


# -- data ------------------------------------------------------------------------------------------
def test_uniform_sampling_takes_segment_middles():
    assert sample_indices(10, 4) == [1, 3, 6, 8]
    assert sample_indices(3, 5) == [0, 0, 1, 2, 2]  # short clips repeat frames
    assert sample_indices(1, 2) == [0, 0]


def test_clip_formats_read_the_sampled_frames(tmp_path):
    from PIL import Image

    frames = np.zeros((10, 4, 6, 3), dtype=np.uint8)
    frames[:, :, :, 0] = np.arange(10)[:, None, None] * 20  # red channel numbers the frame
    np.save(tmp_path / "clip.npy", frames)
    folder = tmp_path / "clip"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t:03d}.png")
    np.save(tmp_path / "float.npy", frames.astype(np.float32) / 255)
    for path in (tmp_path / "clip.npy", folder, tmp_path / "float.npy"):
        clip = read_clip(path, 4)
        assert clip.shape == (4, 3, 4, 6) and clip.dtype == torch.float32
        assert (clip[:, 0, 0, 0] * 255).round().tolist() == [20.0, 60.0, 120.0, 160.0]


def test_fixture_datasets(msrvtt):
    retrieval = load_dataset("msrvtt", "train", root=msrvtt.parent, num_frames=3)
    assert len(retrieval) == 12 and len(retrieval.video_ids) == 6  # two captions per training video
    (frames, caption), label = retrieval[1]
    assert frames.shape == (3, 3, 24, 32) and 0 <= frames.min() and frames.max() <= 1
    assert caption.endswith("grey background") and label == retrieval[0][1] == 0
    assert [retrieval[i][1] for i in range(len(retrieval))] == [i // 2 for i in range(12)]
    categories = load_dataset("msrvtt_category", "test", root=msrvtt.parent, num_frames=2)
    assert len(categories) == 2
    frames, category = categories[0]
    assert frames.shape == (2, 3, 24, 32) and category == synthetic_clip(8)[2]


def test_missing_video_names_annotation_and_video(msrvtt):
    (msrvtt / "videos" / "video8.npy").unlink()
    with pytest.raises(DataError) as error:
        load_dataset("msrvtt", "test", root=msrvtt.parent)
    assert "test.jsonl:1" in str(error.value) and "video8" in str(error.value)


@pytest.mark.parametrize(
    "line,message",
    [
        ({"video_id": "video8", "caption": "   "}, "empty caption"),
        ({"video_id": "video8", "caption": "a cat", "category": 20}, "categories are 0..19"),
        ({"caption": "a cat"}, "needs 'video_id' and 'caption'"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_annotation_lines(msrvtt, line, message):
    annotations = msrvtt / "annotations" / "test.jsonl"
    text = line if isinstance(line, str) else json.dumps(line)
    annotations.write_text(annotations.read_text() + text + "\n")
    with pytest.raises(DataError, match=message) as error:
        load_dataset("msrvtt", "test", root=msrvtt.parent)
    assert "test.jsonl:3" in str(error.value)


def test_corrupt_clips_name_the_file(msrvtt):
    (msrvtt / "videos" / "video8.npy").write_bytes(b"\x93NUMPY garbage")
    dataset = load_dataset("msrvtt", "test", root=msrvtt.parent)
    with pytest.raises(DataError, match=r"video8\.npy"):
        dataset[0]
    frame = msrvtt / "videos" / "video9" / "002.png"
    frame.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"video9/002\.png"):
        dataset[1]
    np.save(msrvtt / "videos" / "video8.npy", np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="frames >= 1"):
        dataset[0]


def test_missing_layout_explains_where_to_get_msrvtt(tmp_path):
    (tmp_path / "msrvtt").mkdir()
    with pytest.raises(DataError, match="download_msrvtt.*MSRVTT.zip"):
        load_dataset("msrvtt", "train", root=tmp_path)


def test_mp4_needs_pyav_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "av", None)  # import av now fails, as without PyAV
    with pytest.raises(DataError, match="pip install av"):
        read_clip(path, 2)


def test_mp4_decodes_with_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for t in range(10):
            image = np.full((32, 32, 3), 25 * t, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    clip = read_clip(path, 4)
    assert clip.shape == (4, 3, 32, 32)
    assert np.allclose((clip.mean(dim=(1, 2, 3)) * 255).numpy(), [25, 75, 150, 200], atol=6)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 256)
    with pytest.raises(DataError, match=r"bad\.mp4"):
        read_clip(tmp_path / "bad.mp4", 2)


def _write_canonical(root, caption_picks):
    """The unpacked MSRVTT.zip: COCO-style MSR_VTT.json, split lists, videos/all/."""
    base = root / "MSRVTT"
    lists = base / "high-quality" / "structured-symlinks"
    lists.mkdir(parents=True)
    (base / "annotation").mkdir()
    (base / "videos" / "all").mkdir(parents=True)
    annotations, images = [], []
    for index in range(4):
        clip, caption, category = synthetic_clip(index)
        np.save(base / "videos" / "all" / f"video{index}.npy", clip)
        images.append({"id": f"video{index}", "category": category})
        annotations += [
            {"image_id": f"video{index}", "caption": f"{caption} #{k}", "id": 3 * index + k} for k in range(3)
        ]
    (base / "annotation" / "MSR_VTT.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    for name, videos in {"train_list_jsfusion.txt": [0, 1], "val_list_jsfusion.txt": [2, 3], "train_list_full.txt": [0, 1],
                         "val_list_full.txt": [2], "test_list_full.txt": [3]}.items():  # fmt: skip
        (lists / name).write_text("".join(f"video{i}\n" for i in videos))
    with open(lists / "jsfusion_val_caption_idx.pkl", "wb") as handle:
        pickle.dump(caption_picks, handle)


def test_canonical_archive_layout(tmp_path):
    _write_canonical(tmp_path / "msrvtt", {"video2": np.int64(2), "video3": 1})
    train = load_dataset("msrvtt", "train", root=tmp_path, num_frames=2)
    assert len(train) == 6 and train[5][1] == 1
    test = load_dataset("msrvtt", "test", root=tmp_path, num_frames=2)
    assert [r.caption[-2:] for r in test.records] == ["#2", "#1"]  # the 1k-A caption picks
    categories = load_dataset("msrvtt_category", "val", root=tmp_path)
    assert len(categories) == 1 and categories[0][1] == synthetic_clip(2)[2]


def test_download_msrvtt_unpacks_a_present_archive(tmp_path):
    import shutil

    from zoo_domains.video_text.data import download_msrvtt

    _write_canonical(tmp_path / "source", {"video2": 0, "video3": 0})
    (tmp_path / "root" / "msrvtt").mkdir(parents=True)
    shutil.make_archive(
        str(tmp_path / "root" / "msrvtt" / "MSRVTT"), "zip", tmp_path / "source"
    )  # no download: it exists
    assert download_msrvtt(tmp_path / "root") == tmp_path / "root" / "msrvtt"
    assert len(load_dataset("msrvtt", "test", root=tmp_path / "root", allow_download=False)) == 2


def test_canonical_caption_index_pickle_cannot_run_code(tmp_path):
    _write_canonical(tmp_path / "msrvtt", {"video2": _Payload()})
    with pytest.warns(UserWarning, match="first caption"):
        test = load_dataset("msrvtt", "test", root=tmp_path)
    assert not _payload_ran and test.records[0].caption.endswith("#0")


# -- retrieval -------------------------------------------------------------------------------------
def _reference_info_nce(video, text, scale, labels):
    """Per-row loops over the definition: -log softmax of the true pair among the allowed ones."""
    n = len(video)
    losses = []
    for i in range(n):
        allowed = [j for j in range(n) if j == i or labels[j] != labels[i]]
        text_row = torch.stack([scale * text[i] @ video[j] for j in allowed])
        video_row = torch.stack([scale * video[i] @ text[j] for j in allowed])
        position = allowed.index(i)
        losses.append(-(text_row.log_softmax(0)[position] + video_row.log_softmax(0)[position]) / 2)
    return torch.stack(losses).mean()


def test_contrastive_loss_matches_the_definition():
    generator = torch.Generator().manual_seed(3)
    video = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    text = F.normalize(torch.randn(5, 8, generator=generator), dim=-1)
    outputs = torch.stack([video, text], dim=1)
    labels = torch.tensor([0, 1, 1, 2, 0])
    scale = torch.tensor(12.5)
    for given in (None, labels):
        reference = _reference_info_nce(video, text, scale, given if given is not None else torch.arange(5))
        assert torch.allclose(contrastive_loss(outputs, scale, given), reference, atol=1e-6)
    assert Temperature(math.log(1000.0))().item() == pytest.approx(100.0)  # clamped as CLIP


def test_retrieval_metrics_rank_text_to_video():
    video = torch.eye(4)
    text = torch.eye(4)[[0, 1, 3, 2]]  # captions 2 and 3 point at each other's video
    metrics = retrieval_evaluate(torch.stack([video, text], dim=1))
    assert metrics["R@1"] == 50.0 and metrics["R@5"] == 100.0 and metrics["median_rank"] == 1.5


def test_lora_on_retrieval_trains_both_towers_and_temperature(msrvtt):
    backbone = tiny()
    model = RetrievalModel(backbone)
    assert model.temperature.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    dataset = load_dataset("msrvtt", "train", root=msrvtt.parent, num_frames=2)
    zp.apply(model, "lora", structure=OPEN_CLIP_VIT, r=4)
    assert any("visual" in n for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)
    assert any("visual" not in n for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n)
    assert any("temperature" in n for n, p in model.named_parameters() if p.requires_grad)
    items = [dataset[i] for i in range(len(dataset))]
    batch = backbone.collate([inputs for inputs, _ in items])
    labels = torch.tensor([label for _, label in items])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(4):
        loss = model.loss(model(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    metrics = model.evaluate(load_dataset("msrvtt", "test", root=msrvtt.parent, num_frames=2), batch_size=1)
    assert set(metrics) == {"R@1", "R@5", "R@10", "median_rank"}


def test_lora_on_multihead_attention_equals_the_dense_update():
    backbone = tiny(text_tower=False)
    model = TaskModel(backbone, "classification", len(CATEGORIES))
    batch = backbone.collate(backbone.example_inputs(2))
    reference = TaskModel(tiny(text_tower=False), "classification", len(CATEGORIES)).eval()
    reference.load_state_dict(model.state_dict())
    zp.apply(model, "lora", structure=OPEN_CLIP_VIT, r=2, lora_alpha=4)
    model.eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for index, block in enumerate(reference.backbone.clip.visual.transformer.resblocks):
            layer = model.backbone.clip.visual.transformer.resblocks[index].attn
            width = block.attn.embed_dim
            for name, offset in (("q", 0), ("v", 2 * width)):
                layer.lora_B["default"][name].weight.copy_(torch.randn(width, 2, generator=generator))
                a, b = layer.lora_A["default"][name].weight, layer.lora_B["default"][name].weight
                block.attn.in_proj_weight[offset : offset + width] += 2.0 * b @ a  # alpha / r = 2
        assert torch.allclose(model(batch), reference(batch), atol=1e-5)


def test_structure_points_at_modules_that_run_on_the_attention_and_ffn_outputs():
    """nn.MultiheadAttention never calls out_proj, so attention_out must be a module that is
    called with the attention branch's output (ls_1) for hook/wrapper methods to act."""
    model = TaskModel(tiny(text_tower=False), "classification", 2)
    blocks = OPEN_CLIP_VIT.block_names(model)
    assert len(blocks) == 2 and all(".visual." in b for b in blocks)
    seen = {}
    for block in blocks:
        model.get_submodule(block).register_forward_pre_hook(
            lambda m, args, key=block: seen.setdefault((key, "input"), args[0])
        )
        for part in ("attention_out", "ffn_in", "ffn_out"):
            module = OPEN_CLIP_VIT.submodule(model, block, getattr(OPEN_CLIP_VIT, part))
            module.register_forward_hook(lambda m, args, out, key=(block, part): seen.setdefault(key, out))
    batch = model.backbone.collate(model.backbone.example_inputs(2))
    with torch.no_grad():
        model(batch)
        for block in blocks:
            module = model.get_submodule(block)
            x = seen[(block, "input")]
            normed = module.ln_1(x)
            attention = module.attn(normed, normed, normed, need_weights=False)[0]
            assert torch.allclose(seen[(block, "attention_out")], attention, atol=1e-6)
            assert (block, "ffn_in") in seen
            after_attention = x + attention
            assert torch.allclose(seen[(block, "ffn_out")], module.mlp(module.ln_2(after_attention)), atol=1e-6)


def test_visual_prompts_stay_in_the_video_tower():
    backbone = tiny()
    model = RetrievalModel(backbone).eval()
    batch = backbone.collate(backbone.example_inputs(2))
    with torch.no_grad():
        base = model(batch)
    zp.apply(model, "vpt", structure=OPEN_CLIP_VIT, num_prompts=3)
    model.eval()
    with torch.no_grad():
        prompted = model(batch)
    assert torch.allclose(prompted[:, 1], base[:, 1], atol=1e-6)  # captions untouched
    assert not torch.allclose(prompted[:, 0], base[:, 0], atol=1e-4)  # videos see the prompts
