"""Thread defaults: take only the cores other processes leave idle."""

import os

import pytest
import torch

from nemon.app import runtime
from nemon.app.cli import build_parser


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(runtime, "_CORES", 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize(
    "load, own, expected",
    [(0.0, 0, 4), (0.4, 0, 4), (1.0, 0, 3), (3.2, 0, 1), (9.0, 0, 1), (4.0, 4, 4), (5.0, 4, 3)],
)
def test_auto_threads_leaves_busy_cores_alone(four_cores, monkeypatch, load, own, expected):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(runtime, "_runnable_now", lambda: 1)
    assert runtime.auto_threads(own) == expected


@pytest.mark.parametrize("runnable, own, expected", [(1, 0, 4), (3, 0, 2), (6, 2, 1), (2, 2, 4)])
def test_tasks_runnable_now_count_before_the_load_average_catches_up(
    four_cores, monkeypatch, runnable, own, expected
):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(runtime, "_runnable_now", lambda: runnable)
    assert runtime.auto_threads(own) == expected


def test_affinity_caps_the_cores(monkeypatch):
    monkeypatch.setattr(runtime, "_CORES", 4)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(runtime, "_runnable_now", lambda: 1)
    assert runtime.auto_threads() == 1


def test_cli_threads_option():
    parse = build_parser().parse_args
    assert parse(["eval", "x"]).threads == "auto"
    assert parse(["eval", "x", "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parse(["eval", "x", "--threads", "0"])


def test_training_records_its_threads(tmp_path):
    from helpers import config, tiny_data

    from nemon.app.train import train

    before = torch.get_num_threads()
    try:
        history = train(config(epochs=1), tmp_path, data=tiny_data(), progress=False, threads=1)
    finally:
        torch.set_num_threads(before)
    assert history["history"][0]["threads"] == 1
