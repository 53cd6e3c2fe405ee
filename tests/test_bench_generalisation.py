"""bench/generalisation.py: which test mice the shipped model may be scored on, and the held-out half."""

from __future__ import annotations

import pytest
from testkit import bench_module


@pytest.fixture(scope="module")
def generalisation():
    return bench_module("generalisation")


def _mouse(group: str, variant: str, index: int, has_tumour: bool = True) -> dict:
    return {"subject_id": f"{group[:3]}-sub-{index:04d}", "group": group, "variant": variant, "has_tumour": has_tumour}


def test_shipped_model_is_not_scored_on_its_own_cohort(generalisation):
    own = generalisation.demo_cohort_mouse
    assert own(_mouse("fixed", "standard", 21), 0, "demo")
    assert own(_mouse("fixed", "standard", 39), 0, "demo")
    assert not own(_mouse("fixed", "standard", 42), 0, "demo")  # beyond the demo's 40 mice
    assert not own(_mouse("fixed", "fine", 22), 0, "demo")  # another variant draws other tumours
    assert not own(_mouse("randomised", "standard", 21), 0, "demo")  # the randomised cohort has seed + 1
    assert not own(_mouse("fixed", "standard", 21), 1, "demo")
    assert not own(_mouse("fixed", "standard", 21), 0, "quick")


def test_half_of_every_stratum_is_held_out(generalisation):
    mice = [_mouse(g, v, i, t) for g in ("fixed", "randomised") for v in ("standard", "fine")
            for i, t in enumerate([True, False, True, False, True, True])]
    for m in mice:
        m["subject_id"] = f"{m['group']}-{m['variant']}-{m['subject_id']}"
    marked = generalisation.mark_test(mice)
    for g in ("fixed", "randomised"):
        for v in ("standard", "fine"):
            for t in (True, False):
                stratum = [m["test"] for m in marked if (m["group"], m["variant"], m["has_tumour"]) == (g, v, t)]
                assert sum(stratum) == len(stratum) // 2
