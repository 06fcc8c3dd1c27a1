"""Two processes with DistributedDataParallel (gloo, CPU) follow the single-process trajectory."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_train_cli import config, tiny_data

from nemon.train import train

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _cfg():
    return config(epochs=1, tol=1e-6, residual="fixed_point", batch_size=40, checkpoint_every=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    init = f"tcp://127.0.0.1:{port}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        result = train(_cfg(), out, data=tiny_data(), progress=False)
        if rank == 0:
            torch.save(result["model"].state_dict(), os.path.join(out, "final.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_on_the_combined_batch(tmp_path):
    single = train(_cfg(), tmp_path / "single", data=tiny_data(), progress=False)["model"]
    out = tmp_path / "ddp"
    out.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out / "final.pt")
    for key, value in single.state_dict().items():
        assert torch.allclose(value, ddp[key], atol=2e-4), key
    assert (out / "checkpoint.pt").exists() and (out / "metrics.jsonl").exists()
