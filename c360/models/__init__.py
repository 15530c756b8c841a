"""Declared entity models (c360.model.declare): the retail model, the default, and yours.

``c360.models.retail.RETAIL`` is what c360 folds when given no model; extend it with
``RETAIL.extend(streams=[...], fields=[...])`` or start from ``EntityModel("mine")``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from c360.errors import ModelError

if TYPE_CHECKING:
    from c360.model.declare import EntityModel


def load(spec: str) -> EntityModel:
    """The model named ``pkg.module:name`` (``c360 run --model``), checked; or a one-line
    :class:`ModelError` saying what is wrong with the name or the model."""
    from c360.model.declare import EntityModel

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelError(f"--model {spec!r}: write it as package.module:name "
                         "(for example c360.models.retail:RETAIL)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"--model {spec!r}: cannot import {module_name} ({exc}); is it on "
                         "PYTHONPATH?") from None
    except Exception as exc:  # the module itself failed: say where, in one line
        raise ModelError(f"--model {spec!r}: importing {module_name} raised "
                         f"{type(exc).__name__}: {exc}") from None
    model = getattr(module, attr, None)
    if callable(model) and not isinstance(model, EntityModel):
        model = model()
    if not isinstance(model, EntityModel):
        raise ModelError(f"--model {spec!r}: {module_name}.{attr} is "
                         f"{type(model).__name__}, not a c360 EntityModel")
    return model.check()
