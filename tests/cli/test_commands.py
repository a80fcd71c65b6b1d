"""``zoo ls``, ``zoo cp``, ``zoo validate``, the offline route, ``--nproc``, and every kind of bad input:
each a clear one-line error (exit code 2) that says what to do, with no run directory left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.catalog.datasets import DATASETS
from zoo.experiment.recipes import list_recipes

# Local copies here are fixtures or a subset, never the canonical file: the warning saying so is expected.
pytestmark = pytest.mark.filterwarnings("ignore::zoo.catalog.download.ChecksumWarning")
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
# Small enough to train on a CPU in a second, built by the real timm ViT loading code from a local file.
SMALL_VIT = (
    "backbone.options.img_size=32",
    "backbone.options.patch_size=8",
    "backbone.options.depth=2",
    "backbone.options.embed_dim=32",
    "backbone.options.num_heads=4",
)


def write_fixture(name: str, root: Path) -> Path:
    spec = DATASETS.get(name)
    spec.make_fixture(root / spec.folder)
    return root


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("recipes", "vision/medical-lora"),
        ("methods", "lora"),
        ("backbones", "vit_b16"),
        ("datasets", "pneumoniamnist_subset"),
        ("tasks", "retrieval"),
        ("structures", "timm-vit"),
    ],
)
def test_ls_lists_each_kind(zoo, what, expected):
    code, out, _ = zoo("ls", what)
    assert code == 0 and expected in out


def test_ls_structures_in_a_fresh_process_lists_the_domains_structures_too(tmp_path):
    # In-process, another test may already have imported the domains; a new `zoo` process has not.
    listed = subprocess.run(
        [sys.executable, "-m", "zoo.cli.main", "ls", "structures"], capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    # the structures of every registered backbone, whichever domain registers them, and the core's own
    from zoo.catalog.backbones import BACKBONES

    structures = [BACKBONES.get(name).structure for name in BACKBONES.names()]
    assert {s.name for s in structures if s is not None} <= names and {"hf-bert", "timm-vit"} <= names


def test_info_on_a_missing_folder_says_it_does_not_exist(zoo, tmp_path):
    code, out, err = zoo("info", "runs/x")
    assert code == 2 and out == ""
    assert "runs/x does not exist" in err and "config.yaml" not in err
    (tmp_path / "notes.txt").write_text("not a run")
    code, _, err = zoo("info", "notes.txt")
    assert code == 2 and "notes.txt is a file, not a run directory" in err
    (tmp_path / "empty").mkdir()  # a folder that exists but is no run: the message names what it lacks
    code, _, err = zoo("info", "empty")
    assert code == 2 and "has no config.yaml" in err


def test_ls_recipes_lists_the_folder_with_a_filter(zoo):
    _, out, _ = zoo("ls")
    assert len(out.strip().splitlines()) == len(list_recipes())
    _, out, _ = zoo("ls", "recipes", "vision/*")
    assert all(line.startswith("vision/") for line in out.strip().splitlines())


def test_cp_writes_a_self_contained_copy_that_runs(zoo, tmp_path):
    code, _, err = zoo("cp", "vision/medical-lora", "mine.yaml")
    assert code == 0, err
    text = (tmp_path / "mine.yaml").read_text()
    assert "defaults:" not in text and "vit_ti16" in text and "name: lora" in text
    (tmp_path / "mine.yaml").write_text(text.replace("r: 8", "r: 2"))
    code, out, err = zoo("validate", "mine.yaml", "scale=tiny")
    assert code == 0 and "r=2" in out, err
    code, _, err = zoo("cp", "vision/medical-lora", "mine.yaml")
    assert code == 2 and "--force" in err


def test_unknown_recipe_suggests_close_matches(zoo, tmp_path):
    code, out, err = zoo("train", "vision/medical-lorra", "scale=tiny")
    assert code == 2 and "unknown recipe 'vision/medical-lorra'" in err and "'vision/medical-lora'" in err
    code, _, err = zoo("train", "kadaptation")
    assert code == 2 and "vision/medical-kadaptation" in err  # a bare method name lists its recipes
    assert_nothing_written(tmp_path)


def test_unknown_override_key_lists_the_valid_keys(zoo, tmp_path):
    code, _, err = zoo("train", "vision/medical-lora", "scale=tiny", "method.rank=4")
    assert code == 2 and "unknown key 'method.rank'" in err and "method.r," in err and "method.lora_alpha" in err
    assert_nothing_written(tmp_path)


def test_wrong_value_type_names_key_value_and_type(zoo, tmp_path):
    code, _, err = zoo("train", "vision/medical-lora", "scale=tiny", "train.lr=fast")
    assert code == 2 and "train.lr='fast' is not allowed" in err and "expected a number" in err
    assert len(err.strip().splitlines()) == 1  # one clear line, no traceback
    assert_nothing_written(tmp_path)


def test_missing_data_says_how_to_get_it(zoo, tmp_path):
    code, _, err = zoo("train", "vision/medical-lora", "data.download=false")
    assert code == 2 and "pneumoniamnist.npz is missing" in err
    assert "ZOO_DATA_DIR=" in err and "data.root=" in err and "scale=tiny" in err
    assert_nothing_written(tmp_path)


def test_missing_data_points_at_a_copy_of_another_name(zoo, tmp_path):
    root = write_fixture("pneumoniamnist_subset", tmp_path / "data")
    code, _, err = zoo("train", "vision/medical-lora", f"data.root={root}", "data.download=false")
    assert code == 2 and "data.name=pneumoniamnist_subset" in err
    assert_nothing_written(tmp_path)


def test_pretrained_weights_unavailable_offline_say_how_to_pass_a_checkpoint(zoo, tmp_path):
    root = write_fixture("pneumoniamnist", tmp_path / "data")
    code, _, err = zoo("train", "vision/medical-lora", f"data.root={root}")  # HF_HUB_OFFLINE=1 (conftest)
    assert code == 2 and "backbone vit_ti16" in err
    assert "backbone.pretrained=/path/to/checkpoint" in err and "scale=tiny" in err
    assert "never switches to random weights" in err
    code, _, err = zoo(
        "train", "vision/medical-lora", f"data.root={root}", f"backbone.pretrained={tmp_path / 'nope.pt'}"
    )
    assert code == 2 and "nope.pt does not exist" in err
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("data", ["fixture", pytest.param("shared", marks=pytest.mark.shared_data)])
def test_offline_route_local_data_root_and_local_checkpoint(zoo, tmp_path, data, monkeypatch):
    """The README's offline route at default scale: ZOO_DATA_DIR with the PneumoniaMNIST subset and
    backbone.pretrained=/path to a timm checkpoint, read by the real loading code."""
    import timm
    from safetensors.torch import save_file

    if data == "shared":
        if not (SHARED_DATA / "medmnist" / "pneumoniamnist_subset.npz").is_file():
            pytest.skip(f"no shared PneumoniaMNIST subset under {SHARED_DATA}")
        root = SHARED_DATA
    else:
        root = write_fixture("pneumoniamnist_subset", tmp_path / "data")
    monkeypatch.setenv("ZOO_DATA_DIR", str(root))
    vit = timm.create_model(
        "vit_base_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=4
    )
    save_file(vit.state_dict(), tmp_path / "vit.safetensors")
    code, out, err = zoo(
        "train",
        "vision/medical-lora",
        "data.name=pneumoniamnist_subset",
        f"backbone.pretrained={tmp_path / 'vit.safetensors'}",
        *SMALL_VIT,
        "data.max_train_examples=16",
        "data.max_eval_examples=16",
        "train.max_steps=2",
        "train.precision=fp32",
        "--out",
        "offline",
    )
    assert code == 0, err
    card = (tmp_path / "offline" / "README.md").read_text()
    # the local checkpoint by its path (this machine's card); the data by its file under the data root
    assert f"local checkpoint `{tmp_path / 'vit.safetensors'}`" in card
    assert "| `medmnist/pneumoniamnist_subset.npz` |" in card and f"`{root}" not in card


def test_validate_reports_a_method_that_does_not_fit_the_backbone(zoo):
    code, _, err = zoo("validate", "video_text/retrieval-bitfit", "method.name=adapter")
    assert code == 2 and "method adapter on backbone clip_vit_b32" in err


def test_overrides_may_follow_options(zoo, tmp_path):
    code, _, err = zoo("train", "vision/medical-linear", "--out", "late", "scale=tiny", "train.max_steps=1")
    assert code == 0, err
    assert json.loads((tmp_path / "late" / "run.json").read_text())["training"]["steps"] == 1


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(120, method="signal")  # a hung gloo rank: fail this test, kill torchrun, go on
def test_nproc_launches_ddp_through_torchrun_and_only_rank_zero_writes(zoo, tmp_path):
    code, _, err = zoo("train", "vision/medical-linear", "scale=tiny", "train.max_steps=2", "--nproc", "2")
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny" / "vision" / "medical-linear"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "complete" and record["command"].endswith("--nproc 2")
    assert len(list((run_dir / "tensorboard").iterdir())) == 1
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob("runs/tiny/vision/medical-linear-*"))  # every process used one folder
