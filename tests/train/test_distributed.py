"""Two CPU processes (gloo) through the launcher give the adapter that one process gives."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from tests.train import distributed_run
from zoo.errors import ConfigError
from zoo.train import launch
from zoo.train.distributed import wrap_ddp
from zoo.train.reporting import read_metrics

REPO = Path(__file__).resolve().parents[2]


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(120, method="signal")  # a hung gloo rank: fail this test, kill torchrun, go on
def test_two_processes_ddp_and_fsdp_match_one_process(tmp_path, monkeypatch):
    """DDP, FSDP, and FSDP killed after step 5 and resumed from its (gathered) step-4 checkpoint."""
    distributed_run.train(str(tmp_path / "single"), "ddp")  # this process, world size 1
    monkeypatch.chdir(REPO)  # the launched module is found from the repository root
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    strategies = ["ddp", "fsdp", "fsdp-resumed"]
    assert launch(2, [str(tmp_path / "two"), *strategies], module="tests.train.distributed_run") == 0

    expected = adapter(tmp_path / "single")
    assert any(value.abs().max() > 1e-3 for key, value in expected.items() if "lora_B" in key)  # it trained
    for strategy in strategies:
        run_dir = tmp_path / "two" / strategy
        got = adapter(run_dir)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6, msg=f"{strategy} {key}")
        # one writer: each step is logged once, and the checkpoints are there
        steps = [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"]
        assert steps == sorted(set(steps)) == [2, 4, 6]
        # checkpoints hold whole tensors (FSDP gathers its shards), as a single process writes them
        for name in ("best.pt", "last.pt"):
            saved = torch.load(run_dir / "checkpoints" / name, weights_only=True)["trainable"]
            reference = torch.load(tmp_path / "single" / "checkpoints" / name, weights_only=True)["trainable"]
            assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in reference.items()}
            assert all(type(value) is torch.Tensor for value in saved.values())


def test_launch_refuses_bad_process_counts_and_nesting(monkeypatch):
    with pytest.raises(ConfigError, match="--nproc=0"):
        launch(0, [])
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="already started by torchrun"):
        launch(2, [])


def test_ddp_wrapper_forwards_model_attributes(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = torch.nn.Linear(3, 2)
        model.loss = lambda outputs, labels: (outputs - labels).pow(2).mean()
        wrapped = wrap_ddp(model, torch.device("cpu"))
        outputs = wrapped(torch.ones(1, 3))
        assert wrapped.loss(outputs, torch.zeros(1, 2)) > 0 and wrapped.weight is model.weight
    finally:
        dist.destroy_process_group()
    assert "WORLD_SIZE" not in os.environ


@pytest.mark.distributed
@pytest.mark.timeout(60, method="signal")
def test_launch_module_command_line(monkeypatch, capfd):
    from zoo.train.launch import main

    assert main(["--nproc", "0", "ls"]) == 2
    assert "--nproc=0" in capfd.readouterr().err
    monkeypatch.chdir(REPO)
    assert main(["--nproc", "1", "--module", "platform", "--"]) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie has exited; only its parent has not read its status yet
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "\nState:\tZ" in status.read_text())


@pytest.mark.distributed
@pytest.mark.timeout(120, method="signal")
def test_an_interrupted_launch_leaves_no_rank_running(tmp_path, monkeypatch):
    """Whatever stops the launcher (Ctrl-C, SIGTERM, a test's timeout) stops torchrun and every rank it
    started: killing torchrun alone would leave the ranks running, each holding a core."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Ctrl-C as Python handles it by default, whatever an earlier test's server left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # and not blocked in this thread
    pids: list[int] = []

    def interrupt_once_both_ranks_run():
        deadline = time.monotonic() + 60
        while len(found := sorted(tmp_path.glob("rank*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.2)  # both pid files are whole
        pids.extend(int(p.read_text()) for p in found)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C

    watcher = threading.Thread(target=interrupt_once_both_ranks_run, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            launch(2, [str(tmp_path)], module="tests.train.sleeping_rank")
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    watcher.join()
    assert len(pids) == 2
    assert [pid for pid in pids if _alive(pid)] == []
