"""TimeBudget: a run fitted into a wall-clock budget, on a clock the test controls."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events

import dfseg.training.handlers as handlers
from dfseg.training import TimeBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Validator:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def run(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _run(monkeypatch: pytest.MonkeyPatch, *, budget_s: float | None, epoch_s: float, max_epochs: int,
         settle: int = 1, slow_from: int | None = None,
         validator: Validator | None = None) -> tuple[Engine, list[float], TimeBudget]:
    clock = FakeClock()
    monkeypatch.setattr(handlers.time, "perf_counter", clock)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs, eta_min=0.01)
    lrs: list[float] = []

    def step(engine: Engine, batch: int) -> None:
        if engine.state.iteration % 2 == 1:
            lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        slow = slow_from is not None and engine.state.epoch > slow_from
        clock.now += epoch_s * (3 if slow else 1) / 2

    engine = Engine(step)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())  # as LrScheduleHandler
    if validator is not None:  # as ValidationHandler(interval=settle)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=settle), lambda e: validator.run(e.state.epoch))
    minutes = None if budget_s is None else budget_s / 60
    budget = TimeBudget(minutes, lr_scheduler=sched, validator=validator, val_interval=settle)
    budget.attach(engine)
    engine.run([0, 1], max_epochs=max_epochs)
    return engine, lrs, budget


def test_epochs_fill_the_budget_and_the_cosine_ends_at_its_minimum(monkeypatch):
    engine, lrs, budget = _run(monkeypatch, budget_s=100.0, epoch_s=4.0, max_epochs=1000, settle=5)
    assert budget.planned_epochs == 25 and engine.state.epoch == 25
    # each epoch's learning rate lies on the closed-form cosine over 25 epochs from epoch 6 on
    expected = [0.01 + 0.99 * (1 + math.cos(math.pi * e / 25)) / 2 for e in range(25)]
    assert lrs[5:] == pytest.approx(expected[5:], abs=1e-9)
    assert lrs[-1] == pytest.approx(0.01 + 0.99 * (1 + math.cos(math.pi * 24 / 25)) / 2, abs=1e-9)


def test_max_epochs_caps_the_plan(monkeypatch):
    engine, _, budget = _run(monkeypatch, budget_s=100.0, epoch_s=1.0, max_epochs=30)
    assert budget.planned_epochs == 30 and engine.state.epoch == 30


def test_run_stops_when_epochs_slow_down(monkeypatch):
    # planned from 4 s epochs (25), then epochs take 12 s: it stops before the budget is overrun
    engine, _, _ = _run(monkeypatch, budget_s=100.0, epoch_s=4.0, max_epochs=1000, settle=2, slow_from=2)
    assert engine.state.epoch < 25
    assert 8.0 + 12.0 * (engine.state.epoch - 2) <= 100.0


def test_no_budget_changes_nothing(monkeypatch):
    engine, lrs, budget = _run(monkeypatch, budget_s=None, epoch_s=4.0, max_epochs=12)
    assert budget.planned_epochs is None and engine.state.epoch == 12
    assert lrs == pytest.approx([0.01 + 0.99 * (1 + math.cos(math.pi * e / 12)) / 2 for e in range(12)], abs=1e-9)


def test_the_last_epoch_is_validated(monkeypatch):
    validator = Validator()
    engine, _, _ = _run(monkeypatch, budget_s=100.0, epoch_s=4.0, max_epochs=1000, settle=4, validator=validator)
    assert engine.state.epoch == 25 and validator.epochs == [4, 8, 12, 16, 20, 24, 25]
    # a budget shorter than one validation interval still validates (and so saves) a model
    validator = Validator()
    engine, _, budget = _run(monkeypatch, budget_s=10.0, epoch_s=4.0, max_epochs=1000, settle=5, validator=validator)
    assert budget.planned_epochs is None and engine.state.epoch == 2 and validator.epochs == [2]


@pytest.mark.parametrize("bundle", ["dfseg_attention_unet", "dfseg_swinunetr"])
def test_bundles_wire_the_budget(bundle):
    """train.yaml's time_budget (minutes, default none) goes to a TimeBudget right after the validation
    handler, with the run's cosine schedule, its validator and its validation interval."""
    import yaml

    from dfseg.resources import bundle_dir

    config = yaml.safe_load((bundle_dir(bundle) / "configs" / "train.yaml").read_text())
    assert config["time_budget"] is None
    handlers = config["train"]["handlers"]
    kinds = [h["_target_"] for h in handlers]
    i = kinds.index("dfseg.training.TimeBudget")
    assert kinds[i - 1] == "ValidationHandler"
    assert {k: v for k, v in handlers[i].items() if k != "_target_"} == {
        "minutes": "@time_budget", "lr_scheduler": "@lr_scheduler",
        "validator": "@validate#evaluator", "val_interval": "@val_interval"}
    assert config["lr_scheduler"]["_target_"] == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert TimeBudget(2.5).seconds == 150.0 and TimeBudget(None).seconds is None
