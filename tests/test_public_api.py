"""The public API: a curated ``c360.__all__``, each name documented in the package docstring,
resolvable, and lazy (``import c360`` imports none of bytewax, pandas or Panel)."""

from __future__ import annotations

import re
import subprocess
import sys

import c360


def test_every_public_name_resolves_and_the_docstring_lists_it() -> None:
    assert 12 <= len(c360.__all__) <= 21  # curated: what a user needs, not every class
    doc = c360.__doc__ or ""
    for name in c360.__all__:
        assert getattr(c360, name) is not None
        assert re.search(rf"`{name}`", doc), f"c360's docstring does not list {name}"
    assert sorted(dir(c360)) == sorted(c360.__all__)


def test_a_name_outside_the_api_says_so() -> None:
    for name in ("Catalogue", "RULES", "CATALOG"):
        try:
            getattr(c360, name)
        except AttributeError as exc:
            assert name in str(exc)
        else:
            raise AssertionError(f"c360.{name} is not public")


def test_import_c360_is_lazy() -> None:
    code = ("import sys, c360; print(sorted(m for m in ('bytewax', 'pandas', 'panel') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_the_extension_points_belong_to_a_pipeline() -> None:
    one, two = c360.Pipeline(c360.Settings()), c360.Pipeline(c360.Settings())

    @one.rule("hello", streams={"search"})
    def hello(c, changes, event):
        return c360.decide("say_hello", "hello", ["name"])

    assert isinstance(one.rules, c360.RuleBook) and isinstance(one.segments, c360.SegmentBook)
    assert "hello" in one.rules and "hello" not in two.rules
    assert one.rules.products is not two.rules.products
    assert sorted(one.segments) == sorted(two.segments) == ["at_risk", "bargain_hunter",
                                                            "new", "vip"]
