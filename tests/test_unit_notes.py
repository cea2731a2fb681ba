"""The notes under a plasticity table about how many independent units its CIs rest on."""

from __future__ import annotations

from vitplas.analysis.tables import unit_notes


def test_one_unit_gives_no_interval_and_says_so():
    (note,) = unit_notes({"reference": (1, "photos"), "target": (300, "images")})
    assert note == (
        "the reference stream has 1 independent unit (photos): no 95% CI (nan), which needs 2 "
        "or more; draw its pairs from more sources"
    )


def test_few_units_name_the_degrees_of_freedom_and_many_say_nothing():
    notes = unit_notes({"reference": (17, "photos"), "target": (30, "images")})
    assert notes == [
        "the reference stream has 17 independent units (photos): the 95% CIs rest on them "
        "(Student's t, 16 degrees of freedom), not on the pairs"
    ]
    both = unit_notes({"reference": (17, "photos"), "target": (12, "images")})
    assert [n.split("(Student's t, ")[1][:2] for n in both] == ["11", "11"]  # min(G, H) - 1
    assert unit_notes(None) == [
        "CIs take every pair as independent (no image ids: tensors or loaders)"
    ]
