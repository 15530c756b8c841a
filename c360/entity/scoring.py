"""A trained linear model deployed as a rule: it scores each customer live and explains each
decision by its top features.

A data scientist trains on a point-in-time training set (``History.training_set``, notebook
08), then hands the fitted scikit-learn pipeline (imputer, scaler, logistic regression) to
:meth:`LinearScore.from_sklearn`, which keeps only its numbers: no scikit-learn (and no
numpy) in the fold, and a score of one customer is a few multiplications per feature (14 µs
for notebook 08's 11 features, against 1.1 ms for ``predict_proba`` on one row)::

    score = LinearScore.from_sklearn(model, ["order_count", "total_spent",
                                             days_since("last_order_at")], target="p_return")
    score.add_to(pipeline.rules, "likely_to_return", threshold=0.3, action="second_order_offer",
                 model=pipeline.model)

The rule is an ordinary rule of the book (:mod:`c360.entity.rules`): it runs from the next
event on, when one of the fields it reads changed, and its :class:`~c360.entity.rules.Decision`
(cool-down, opt-out, the decisions topic, the entity's ``decisions``) is the engine's. It
decides when the score is at or above the threshold; the reason names the features with the
largest contributions (coefficient × scaled value: their sum plus the intercept is the
log-odds), with their values, and the decision's ``fields`` are the entity fields behind them.

The score reads the entity's fields only. Ages (:func:`days_since`) count to the entity's
``last_seen`` (the latest event time folded), never to the wall clock, so a replay scores as
the live run did, and a training row read as of time ``t`` scores as the entity did at ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from c360.entity.rules import Decision, Rule, RuleBook, RuleFn, decide
from c360.errors import ConfigError, DataError, ModelError
from c360.model import events as ev

if TYPE_CHECKING:
    from c360.model.declare import EntityModel

Fields = Mapping[str, Any]
NUMERIC = frozenset({"int", "float", "money", "share", "bool"})  # declared types read as numbers
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Feature:
    """One input column of the model: a number computed from the entity's fields.

    ``fn`` None: the field ``name`` itself (None when unset: missing). Otherwise ``fn`` reads
    only ``inputs`` (the rule runs when one of them changes)."""

    name: str
    inputs: tuple[str, ...]
    fn: Callable[[Fields], float | None] | None = field(default=None, compare=False)

    def value(self, c: Fields) -> float | None:
        """The feature's value for fields ``c``; None: missing."""
        x = c.get(self.name) if self.fn is None else self.fn(c)
        if x is None:
            return None
        if isinstance(x, bool | int | float):
            x = float(x)
            return None if math.isnan(x) else x
        raise DataError(f"feature {self.name!r} is a {type(x).__name__}, not a number: score "
                        f"a number of it (days_since({self.name!r}) for a time)")


def days_since(field_name: str, *, now: str = "last_seen", name: str | None = None) -> Feature:
    """Days from the time in field ``field_name`` to the entity's ``now`` field (its latest
    event time by default): an age in event time. Named ``days_since_<field>`` unless
    ``name`` is given (``name="days_since_last_order"``)."""

    def age(c: Fields) -> float | None:
        then, until = c.get(field_name), c.get(now)
        if then is None or until is None:
            return None
        if isinstance(then, datetime) != isinstance(until, datetime):  # a date and a time
            then = then.date() if isinstance(then, datetime) else then
            until = until.date() if isinstance(until, datetime) else until
        if not isinstance(then, date) or not isinstance(until, date):
            raise DataError(f"days_since({field_name!r}): {field_name!r} and {now!r} must be "
                            f"times, not {type(then).__name__} and {type(until).__name__}")
        return float((until - then) / _DAY)

    return Feature(name or f"days_since_{field_name}", (field_name, now), age)


class Contribution(NamedTuple):
    """One model column's part in a score: ``contribution`` = coefficient × scaled value."""

    name: str  # the feature, or "<feature> missing" for its missing-value indicator
    value: float | None  # the feature's value as read (None: missing, imputed)
    contribution: float
    fields: tuple[str, ...]  # the entity fields it was computed from

    def describe(self) -> str:
        if self.name.endswith(" missing"):
            shown = self.name
        elif self.value is None:
            shown = f"{self.name} missing"
        else:
            shown = f"{self.name} {self.value:.4g}"
        return f"{shown} ({self.contribution:+.2f})"


@dataclass(frozen=True)
class LinearScore:
    """A fitted linear model as plain numbers: ``features`` in the order it was trained on;
    per feature, the value imputed for a missing one (``fill``, None: not imputed, so a
    missing value gives no score); the features with a missing-value indicator column
    (``indicators``, after the features' columns, as scikit-learn's ``add_indicator``); per
    column, the scaler's ``mean`` and ``scale`` (empty: none) and the ``coef``; the
    ``intercept``. ``logistic``: the score is the probability (sigmoid of the log-odds),
    else the linear value itself. ``dropped``: features the imputer dropped (never observed
    in training), which have no column. Build with :meth:`from_sklearn`, or by hand."""

    features: tuple[Feature, ...]
    coef: tuple[float, ...]
    intercept: float
    fill: tuple[float | None, ...] = ()
    indicators: tuple[int, ...] = ()
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    logistic: bool = True
    target: str = "score"
    dropped: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"feature {twice[0]!r} is given twice; name each feature once")
        columns = len(self.features) - len(self.dropped) + len(self.indicators)
        for what, values in (("coef", self.coef), ("mean", self.mean), ("scale", self.scale)):
            if values and len(values) != columns or what == "coef" and not values:
                raise ConfigError(f"the model has {len(values)} {what} values for {columns} "
                                  f"columns ({len(self.features)} features, "
                                  f"{len(self.indicators)} indicators): give the features it "
                                  "was trained on, in order")
        if self.fill and len(self.fill) != len(self.features):
            raise ConfigError(f"{len(self.fill)} imputed values for {len(self.features)} "
                              "features: give one per feature (None: not imputed)")
        if any(not 0 <= i < len(self.features) for i in (*self.indicators, *self.dropped)):
            raise ConfigError("an indicator or dropped feature index is out of range")
        if not all(math.isfinite(x) for x in (*self.coef, *self.mean, *self.scale,
                                               self.intercept)) or 0.0 in self.scale:
            raise ConfigError("the model's coefficients, intercept, means and scales must be "
                              "finite numbers (and scales not 0)")

    # -- from scikit-learn ----------------------------------------------------------------------
    @classmethod
    def from_sklearn(cls, estimator: Any, features: Sequence[str | Feature] | None = None, *,
                     target: str = "score") -> LinearScore:
        """The numbers of a fitted scikit-learn linear model, optionally in a pipeline after
        a ``SimpleImputer`` (NaN as missing; ``add_indicator`` too) and a ``StandardScaler``,
        in that order. Read by duck typing (``named_steps``, ``statistics_``, ``mean_``,
        ``scale_``, ``coef_``, ``intercept_``): scikit-learn is not imported.

        ``features``: the training columns in order, each a field name or a :class:`Feature`
        (:func:`days_since`); default: the names the model was fitted with (a DataFrame's
        columns), each a field. Anything else (another step, a non-linear or multi-class
        model, features that are not the ones it was fitted on) is refused in one
        :class:`~c360.errors.ConfigError` line."""
        steps = _steps(estimator)
        *before, last = steps
        imputer = scaler = None
        for s in before:
            kind = type(s).__name__
            if hasattr(s, "statistics_") and imputer is None and scaler is None:
                imputer = s
            elif hasattr(s, "mean_") and hasattr(s, "scale_") and scaler is None:
                scaler = s
            else:
                raise ConfigError(f"pipeline step {kind} cannot be scored live: only a "
                                  "SimpleImputer, then a StandardScaler, then a linear model")
        given = _features(estimator, steps[0], features)
        coef = getattr(last, "coef_", None)
        if coef is None or not hasattr(last, "intercept_"):
            raise ConfigError(f"{type(last).__name__} is not a linear model (no coef_ and "
                              "intercept_): only a linear model is scored live")
        rows = _tolist(coef)
        if rows and isinstance(rows[0], list):
            if len(rows) != 1:
                raise ConfigError(f"{type(last).__name__} has {len(rows)} rows of "
                                  "coefficients (multi-class): only a binary classifier or a "
                                  "regression is scored live")
            rows = rows[0]
        classes = getattr(last, "classes_", None)
        if classes is not None and len(_tolist(classes)) != 2:
            raise ConfigError(f"{type(last).__name__} has {len(_tolist(classes))} classes: only "
                              "a binary classifier is scored live")
        intercept = _tolist(last.intercept_)
        b = float(intercept[0] if isinstance(intercept, list) else intercept)
        fill: list[float | None] = [None] * len(given)
        indicators: list[int] = []
        dropped: set[int] = set()
        if imputer is not None:
            missing = getattr(imputer, "missing_values", math.nan)
            if not (isinstance(missing, float) and math.isnan(missing)):
                raise ConfigError(f"the imputer reads {missing!r} as missing: only NaN "
                                  "(None in the entity) is scored live")
            stats = [float(x) for x in _tolist(imputer.statistics_)]
            if len(stats) != len(given):
                raise ConfigError(f"the imputer was fitted on {len(stats)} features, not the "
                                  f"{len(given)} given: give the features it was trained on")
            keep_empty = bool(getattr(imputer, "keep_empty_features", False))
            for i, x in enumerate(stats):
                if math.isnan(x) and not keep_empty:
                    dropped.add(i)  # never observed: scikit-learn drops its column
                else:
                    fill[i] = 0.0 if math.isnan(x) else x
            indicator = getattr(imputer, "indicator_", None)
            if indicator is not None:
                indicators = [int(i) for i in _tolist(indicator.features_)]
        mean: list[float] = []
        scale: list[float] = []
        if scaler is not None:
            columns = len(given) - len(dropped) + len(indicators)
            mean = ([float(x) for x in _tolist(scaler.mean_)]
                    if getattr(scaler, "with_mean", True) and scaler.mean_ is not None
                    else [0.0] * columns)
            scale = ([float(x) for x in _tolist(scaler.scale_)]
                     if getattr(scaler, "with_std", True) and scaler.scale_ is not None
                     else [1.0] * columns)
        logistic = classes is not None and hasattr(last, "predict_proba")
        return cls(tuple(given), tuple(float(x) for x in rows), b, tuple(fill),
                   tuple(indicators), tuple(mean), tuple(scale), logistic, target,
                   frozenset(dropped))

    # -- scoring ---------------------------------------------------------------------------------
    @property
    def inputs(self) -> frozenset[str]:
        """The entity fields the score reads."""
        return frozenset(f for feature in self.features for f in feature.inputs)

    def check(self, model: EntityModel, entity: str = "customer") -> LinearScore:
        """This score, or a :class:`~c360.errors.ModelError` line naming the first field it
        reads that ``model`` does not declare, or a plain feature that is not a number."""
        declared = {f.name: f for f in model.fields_of(entity)}
        for feature in self.features:
            for name in feature.inputs:
                if name not in declared:
                    raise ModelError(f"feature {feature.name!r}: field {name!r} is not "
                                     f"declared in model {model.name!r}; declare it, or train "
                                     "without it")
            if feature.fn is None and declared[feature.name].type not in NUMERIC:
                raise ModelError(f"feature {feature.name!r} is a {declared[feature.name].type} "
                                 f"field, not a number; score a number of it "
                                 f"(days_since({feature.name!r}) for a time)")
        return self

    def _parts(self, values: list[float | None]) -> list[float] | None:
        """Each column's contribution (coefficient × scaled value), in column order; None
        when a feature without an imputed value is missing. The hot path: plain floats."""
        coef, mean, scale, fill, dropped = (self.coef, self.mean, self.scale, self.fill,
                                            self.dropped)
        out: list[float] = []
        k = 0
        for i, v in enumerate(values):
            if dropped and i in dropped:
                continue
            if v is None:
                v = fill[i] if fill else None
                if v is None:
                    return None
            out.append(coef[k] * ((v - mean[k]) / scale[k] if mean else v))
            k += 1
        for i in self.indicators:
            x = 1.0 if values[i] is None else 0.0
            out.append(coef[k] * ((x - mean[k]) / scale[k] if mean else x))
            k += 1
        return out

    def _explained(self, values: list[float | None], parts: list[float]) -> list[Contribution]:
        columns = [(i, False) for i in range(len(values)) if i not in self.dropped]
        columns += [(i, True) for i in self.indicators]
        out = [Contribution(f"{self.features[i].name} missing" if indicator
                            else self.features[i].name,
                            (1.0 if values[i] is None else 0.0) if indicator else values[i],
                            part, self.features[i].inputs)
               for (i, indicator), part in zip(columns, parts, strict=True)]
        out.sort(key=lambda x: -abs(x.contribution))
        return out

    def contributions(self, c: Fields) -> list[Contribution] | None:
        """Each column's contribution for fields ``c``, largest ``|contribution|`` first;
        None when a feature without an imputed value is missing."""
        values = [f.value(c) for f in self.features]
        parts = self._parts(values)
        return None if parts is None else self._explained(values, parts)

    def linear(self, c: Fields) -> float | None:
        """The linear value (the log-odds of a classifier) for fields ``c``."""
        parts = self._parts([f.value(c) for f in self.features])
        return None if parts is None else self.intercept + math.fsum(parts)

    def score(self, c: Fields) -> float | None:
        """The score for fields ``c`` (a probability when :attr:`logistic`); None when a
        feature without an imputed value is missing."""
        z = self.linear(c)
        return z if z is None or not self.logistic else _sigmoid(z)

    def explain(self, c: Fields, top: int = 3) -> str:
        """The score and its ``top`` contributions in words."""
        parts = self.contributions(c)
        score = self.score(c)
        if parts is None or score is None:
            missing = [f.name for f in self.features if f.value(c) is None]
            return f"{self.target} not scored: {', '.join(missing)} missing"
        return (f"{self.target} {score:.3f}; top features: "
                + ", ".join(p.describe() for p in parts[:top]))

    # -- as a rule -------------------------------------------------------------------------------
    def rule(self, threshold: float, action: str, *, top: int = 3) -> RuleFn:
        """A rule function (``RuleBook.add``) deciding ``action`` when the score is at or
        above ``threshold``, explained by the ``top`` contributions."""
        if not isinstance(threshold, int | float) or not math.isfinite(threshold) or (
                self.logistic and not 0 <= threshold <= 1):
            raise ConfigError(f"threshold must be a number{' from 0 to 1' if self.logistic else ''}"
                              f", not {threshold!r}")
        if top < 1:
            raise ConfigError(f"top must be at least 1 feature, not {top}")
        if not action:
            raise ConfigError("a scoring rule needs an action to decide")
        def scored(c: Fields, changes: Fields, event: ev.Event) -> Decision | None:
            values = [f.value(c) for f in self.features]
            parts = self._parts(values)
            if parts is None:
                return None
            z = self.intercept + math.fsum(parts)
            score = _sigmoid(z) if self.logistic else z
            if score < threshold:
                return None  # most events: no explanation built
            shown = self._explained(values, parts)[:top]
            fields = list(dict.fromkeys(f for p in shown for f in p.fields))
            return decide(action, f"{self.target} {score:.3f} >= {threshold:g}; top features: "
                          + ", ".join(p.describe() for p in shown), fields)

        return scored

    def add_to(self, book: RuleBook, name: str, *, threshold: float, action: str,
               top: int = 3, cooldown: timedelta = timedelta(days=1), marketing: bool = False,
               model: EntityModel | None = None) -> Rule:
        """Deploy: add the rule to ``book`` (a pipeline's ``rules``), run when a field the
        score reads changes. ``model``: check the fields against it first (a pipeline checks
        its rules' fields against its model at start anyway)."""
        if model is not None:
            self.check(model)
        return book.add(name, self.rule(threshold, action, top=top), cooldown=cooldown,
                        marketing=marketing, when=sorted(self.inputs))


def _sigmoid(z: float) -> float:
    """The logistic function, without overflow for large ``|z|``."""
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _steps(estimator: Any) -> list[Any]:
    named = getattr(estimator, "named_steps", None)
    if named is None:
        return [estimator]
    steps = [s for s in named.values() if s is not None and s != "passthrough"]
    if not steps:
        raise ConfigError("the pipeline has no steps to score")
    return steps


def _features(estimator: Any, first: Any, features: Sequence[str | Feature] | None
              ) -> list[Feature]:
    fitted = getattr(estimator, "feature_names_in_", getattr(first, "feature_names_in_", None))
    names = [str(n) for n in _tolist(fitted)] if fitted is not None else None
    if features is None:
        if names is None:
            raise ConfigError("the model was not fitted on named columns: give features=[...], "
                              "the columns it was trained on, in order")
        features = names
    given = [f if isinstance(f, Feature) else Feature(str(f), (str(f),)) for f in features]
    n = getattr(first, "n_features_in_", None)
    if names is not None and [f.name for f in given] != names:
        extra = sorted({f.name for f in given} - set(names))
        what = (f"feature {extra[0]!r} is not one the model was trained on" if extra
                else "the features are not the ones the model was trained on, in order")
        raise ConfigError(f"{what}; it was trained on: {', '.join(names)}")
    if n is not None and int(n) != len(given):
        raise ConfigError(f"the model was trained on {int(n)} features, not the {len(given)} "
                          "given: give the features it was trained on, in order")
    return given


def _tolist(x: Any) -> Any:
    """An array (numpy's, duck-typed) or a sequence as plain Python lists."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Iterable) and not isinstance(x, str):
        return list(x)
    return x
