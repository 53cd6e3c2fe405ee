"""bench/generalisation.py: which test mice the shipped model may be scored on, and the held-out half."""

from __future__ import annotations

import json

import pytest
from testkit import bench_module


@pytest.fixture(scope="module")
def generalisation():
    return bench_module("generalisation")


def _mouse(group: str, variant: str, index: int, has_tumour: bool = True) -> dict:
    return {"subject_id": f"{group[:3]}-sub-{index:04d}", "group": group, "variant": variant, "has_tumour": has_tumour}


def test_shipped_model_is_not_scored_on_its_own_cohort(generalisation):
    own = generalisation.shipped_cohort_mouse
    made_with = {"seed": 0, "protocol": "demo", "subjects": 96, "variants": ["standard", "fine", "coarse"]}
    assert own(_mouse("fixed", "standard", 21), 0, "demo", made_with)
    assert own(_mouse("fixed", "coarse", 47), 0, "demo", made_with)
    assert not own(_mouse("fixed", "standard", 96), 0, "demo", made_with)  # beyond the model's 96 mice
    assert not own(_mouse("randomised", "standard", 21), 0, "demo", made_with)  # the randomised cohort has seed + 1
    assert own(_mouse("randomised", "standard", 21), -1, "demo", made_with)  # ... which is the model's seed here
    assert not own(_mouse("fixed", "standard", 21), 1, "demo", made_with)
    assert not own(_mouse("fixed", "standard", 21), 0, "quick", made_with)
    assert not own(_mouse("fixed", "standard", 39), 0, "demo", {**made_with, "subjects": 30})


def test_the_shipped_model_says_what_it_was_made_from(generalisation):
    from dfseg.resources import SHIPPED_COHORT, shipped_model

    made_with = json.loads((shipped_model() / SHIPPED_COHORT).read_text())
    assert {"seed", "protocol", "subjects", "variants", "randomise_fraction"} <= set(made_with)


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
