"""Solvers own their settings; solves return their results and write into nothing (#42)."""

import dataclasses
import math
import threading

import pytest
import torch

import nemon
from nemon.solvers import (
    SOLVERS,
    Anderson,
    Averaged,
    Diagonal,
    ForwardBackward,
    PeacemanRachford,
    SolverOptions,
    get_solver,
)

DT = torch.float64


def test_a_name_is_the_solver_with_its_defaults():
    for name, cls in SOLVERS.items():
        assert SolverOptions(method=name).method == cls()
        assert get_solver(cls().spec()) == cls()
    assert SolverOptions(method="anderson") == SolverOptions(method=Anderson(memory=5))
    assert SolverOptions(method=Anderson(memory=3)) != SolverOptions(method="anderson")


def test_settings_live_on_their_solver_and_travel_as_specs():
    assert Anderson(memory=3).spec() == {"name": "anderson", "memory": 3}
    assert get_solver({"name": "peaceman_rachford", "step": 0.25}) == PeacemanRachford(step=0.25)
    assert str(Averaged(alpha=0.5)) == "averaged(alpha=0.5)"
    assert not hasattr(SolverOptions(), "alpha") and not hasattr(SolverOptions(), "memory")
    assert [SOLVERS[n]().adjoint_form for n in ("diagonal", "forward_backward")] == [
        "transpose",
        "prox",
    ]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Anderson(memory=0), "memory"),
        (lambda: Averaged(alpha=-1.0), "alpha"),
        (lambda: ForwardBackward(step=math.nan), "step"),
        (lambda: get_solver({"name": "anderson", "step": 1.0}), "takes the settings"),
        (lambda: get_solver("newton"), "unknown solver 'newton'"),
    ],
)
def test_bad_settings_are_refused_by_name(make, message):
    with pytest.raises(nemon.InputError, match=message):
        make()


def test_a_layer_takes_a_solver_object_and_its_model_file_keeps_it(tmp_path):
    layer = nemon.NEMONDense(6, 8, solver=Anderson(memory=2), backward_solver="averaged")
    assert layer.settings()["solver"] == {"name": "anderson", "memory": 2}
    model = nemon.Classifier(layer, 3)
    loaded = nemon.load(nemon.save(model, tmp_path / "m.safetensors"))
    assert loaded.layer.solver_options.method == Anderson(memory=2)
    assert loaded.layer.backward_options.method == Averaged()


def test_stats_are_immutable_with_a_result_code():
    layer = nemon.NEMONDense(6, 8).double()
    u = torch.randn(4, 6, dtype=DT)
    stats = layer.solve(u).stats
    assert stats.result == "converged"
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.iterations = 0
    with layer.solver_settings(max_iter=2, warn=False, tol=1e-12):
        assert layer.solve(u).stats.result == "max_iterations"


def test_forward_and_backward_write_nothing_into_the_layer():
    torch.manual_seed(0)
    model = nemon.Classifier(nemon.NEMONDense(6, 8), 3)
    before = {k: v for k, v in vars(model.layer).items() if not k.startswith("_")}
    loss = model(torch.randn(5, 6)).sum()
    loss.backward()
    after = {k: v for k, v in vars(model.layer).items() if not k.startswith("_")}
    assert before.keys() == after.keys()
    assert all(before[k] is after[k] for k in before)


def test_a_solve_log_collects_what_the_solves_return():
    torch.manual_seed(0)
    model = nemon.Classifier(nemon.NEMONDense(6, 8), 3)
    u = torch.randn(5, 6)
    with nemon.SolveLog() as outer:
        with nemon.SolveLog() as inner:
            model(u).sum().backward()
        model(u)
    assert [(r.kind, r.direction) for r in inner.records] == [
        ("state", "forward"),
        ("state", "backward"),
    ]
    assert len(outer.stats("forward")) == 2 and len(outer.stats("backward")) == 1
    assert inner.mean_iterations("forward") == inner.records[0].stats.iterations > 0
    assert outer.unconverged == 0
    # the adjoint solve reuses the steps its forward computed (the same solver, the same A)
    forward, backward = inner.records[0].stats, inner.records[1].stats
    assert backward.prepared is forward.prepared is not None
    model(u).sum().backward()  # outside a log: nothing collected anywhere
    assert len(outer.records) == 3


def test_interval_solves_are_logged_as_embedding_solves():
    layer = nemon.NEMONDense(6, 8).double()
    u = torch.randn(3, 6, dtype=DT)
    with nemon.SolveLog() as log:
        layer.interval_bounds(u - 0.1, u + 0.1)
    assert [r.kind for r in log.records] == ["embedding"]


def test_the_adjoint_reports_to_the_log_open_at_its_forward_from_any_thread():
    model = nemon.Classifier(nemon.NEMONDense(6, 8), 3)
    with nemon.SolveLog() as log:
        loss = model(torch.randn(5, 6)).sum()
    worker = threading.Thread(target=loss.backward)
    worker.start()
    worker.join()
    assert [r.direction for r in log.records] == ["forward", "backward"]


def test_a_different_backward_solver_computes_its_own_steps():
    layer = nemon.NEMONDense(6, 8, solver="diagonal", backward_solver="averaged")
    with nemon.SolveLog() as log:
        layer(torch.randn(4, 6)).sum().backward()
    forward, backward = log.stats("forward")[0], log.stats("backward")[0]
    assert forward.method == "diagonal" and backward.method == "averaged"
    assert backward.prepared is not forward.prepared
    assert isinstance(forward.prepared.steps, torch.Tensor)
    assert isinstance(backward.prepared.steps, float)


def test_the_splitting_step_search_changes_only_the_splitting_solver():
    layer = nemon.MONDense(6, 8, solver="forward_backward", backward_solver="forward_backward")
    layer.set_splitting_step(0.25)
    assert layer.solver_options.method == ForwardBackward(step=0.25)
    nemon_layer = nemon.NEMONDense(6, 8)
    nemon_layer.set_splitting_step(0.25)  # no splitting solver: nothing to set
    assert nemon_layer.solver_options.method == Diagonal()


def test_a_resume_compares_plain_values_not_their_containers():
    """Tuples recorded as lists, nested dataclasses recorded as dicts: the same settings."""
    from dataclasses import dataclass, field

    from nemon.resume import compare_settings

    @dataclass
    class Inner:
        a: int = 1

    @dataclass
    class Settings:
        milestones: tuple = (5,)
        inner: Inner = field(default_factory=Inner)
        extra: dict = field(default_factory=dict)
        epochs: int = 3

    same = {"milestones": [5], "inner": {"a": 1}, "extra": {"k": [1, 2]}, "epochs": 1}
    assert compare_settings(same, Settings(extra={"k": (1, 2)})) == ([], [])
    changed, _ = compare_settings({**same, "milestones": [6], "inner": {"a": 2}}, Settings())
    assert changed == [
        "milestones: [6] -> [5]",
        "inner: {'a': 2} -> {'a': 1}",
        "extra: {'k': [1, 2]} -> {}",
    ]
