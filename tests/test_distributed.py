"""Two processes with DistributedDataParallel (gloo, CPU) follow the single-process trajectory."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import config, tiny_data

from nemon.app.train import train

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _cfg():
    return config(epochs=1, tol=1e-6, residual="fixed_point", batch_size=40, checkpoint_every=0)


def _worker(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    # a file store: no port to pick, so no race with other processes for it
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        result = train(_cfg(), out, data=tiny_data(), progress=False)
        shard = result["history"][0]["train_samples"]
        torch.save(
            {"model": result["model"].state_dict(), "samples": shard},
            os.path.join(os.path.dirname(out), f"rank{rank}.pt"),
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_on_the_combined_batch(tmp_path):
    single = train(_cfg(), tmp_path / "single", data=tiny_data(), progress=False)["model"]
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key, value in single.state_dict().items():
        for r in ranks:
            assert torch.allclose(value, r["model"][key], atol=2e-4), key
    # each rank trained on its own half of every batch: the summed count is the data set, once
    assert [r["samples"] for r in ranks] == [200, 200]
    assert (out / "checkpoint.pt").exists() and (out / "metrics.jsonl").exists()
