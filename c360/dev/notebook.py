"""Offline-first notebooks: plots and pages that draw without a network.

By default BokehJS, Panel's JS and Panel's stylesheets load from a CDN, so behind a
firewall every plot of a notebook is blank. :func:`offline` loads the JS inline with the
notebook's outputs and shows HoloViews objects through Panel, whose notebook output
carries its stylesheets inline (HoloViews' own display path links them from the CDN)::

    from c360.dev.notebook import offline
    offline()
"""

from __future__ import annotations

from typing import Any

EXTENSIONS = ("tabulator",)  # Panel extensions the dashboards use


def _through_panel(obj: Any, include: Any = None, exclude: Any = None) -> Any:
    import panel as pn

    view = pn.panel(obj)  # typed Viewable | ServableMixin; a HoloViews object gives a Viewable
    if not isinstance(view, pn.viewable.Viewable | pn.viewable.Viewer):
        raise TypeError(f"pn.panel gave a {type(view).__name__}, which Jupyter cannot show")
    return view._repr_mimebundle_(include, exclude)


def offline() -> None:
    """Load BokehJS, HoloViews' and Panel's JS inline (``inline=True``) and display every
    HoloViews object through Panel. Call it once, before the first plot; outside IPython
    (``panel serve`` of a notebook) it only loads the extensions."""
    import holoviews as hv
    import panel as pn

    hv.extension("bokeh", inline=True)
    pn.extension(*EXTENSIONS, inline=True)
    try:
        from IPython import get_ipython
    except ImportError:  # not in IPython: nothing is displayed here
        return
    ip = get_ipython()
    if ip is None:
        return
    from holoviews.core.dimension import Dimensioned

    # A type printer comes before the object's own _repr_mimebundle_ (HoloViews').
    ip.display_formatter.mimebundle_formatter.for_type(Dimensioned, _through_panel)
