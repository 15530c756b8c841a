"""The c360 dashboard: overview, customer finder and the live Customer 360 view.

    panel serve dashboards/app.py --basic-auth users.json --cookie-secret SECRET

with ``C360_KAFKA_BOOTSTRAP`` (the cluster) and ``C360_DASHBOARD_SCOPES`` (user -> scope,
see :mod:`dashboards.access`). ``c360 demo`` serves it too, at ``/app``. OAuth instead of
basic auth: Panel's ``--oauth-provider`` options; the scopes file then maps the OAuth
user names.

Every session of the server process reads one shared store (:func:`c360.run.shared.shared_store`)
and one shared feed (:func:`dashboards.feed.shared_feed`); its periodic callbacks only
refresh the page that is showing.
"""

from __future__ import annotations

import html
from typing import Any

import panel as pn

from c360.config import Settings
from c360.errors import C360Error
from c360.store.memory import EntityStore
from c360.sync.auth import Scope
from dashboards.access import NARROW, scope_for
from dashboards.customer import PERIOD_MS, CustomerView
from dashboards.feed import Feed, shared_feed
from dashboards.finder import FinderPage
from dashboards.live import ACCENT, PAGE_BACKGROUND, error_page
from dashboards.overview import OverviewPage

pn.extension("tabulator")

OVERVIEW_MS = 1000  # the feed samples once a second: faster would redraw nothing new
TABS = ("Overview", "Customer finder", "Customer 360")


def _header(user: str, scope: Scope) -> pn.pane.HTML:
    what = "PII visible" if scope.pii else "PII redacted"
    can = ", ".join(scope.commands) if scope.commands else "no commands"
    who = (f'signed in as <b class="c360-user">{html.escape(user)}</b> · '
           f'<a href="/logout" style="color:white">log out</a>' if user else "not signed in")
    return pn.pane.HTML(
        f'<div style="display:flex;align-items:baseline;gap:14px;padding:10px 16px;'
        f'border-radius:10px;background:{ACCENT};color:white;font-family:system-ui">'
        f'<span style="font-size:1.5em;font-weight:700">c360</span>'
        f"<span>the live Customer 360</span><span style='margin-left:auto'>{who} · "
        f'<span class="c360-scope">scope {html.escape(scope.name)}: {what}; '
        f"{html.escape(can)}</span></span></div>", sizing_mode="stretch_width")


class Dashboard(pn.viewable.Viewer):
    """The three pages in tabs, for one session and one user's scope.

    A page is built when it is first shown, and the tabs are dynamic (only the page
    showing is rendered in the browser): a session that only watches the overview costs
    the server one page, not three. Fifty sessions open that much faster.
    """

    def __init__(self, store: EntityStore, feed: Feed, scope: Scope, user: str = "",
                 settings: Settings | None = None, **params: Any) -> None:
        super().__init__(**params)
        self._args = (store, feed, scope, user, settings)
        self._pages: dict[int, Any] = {}
        self._slots = [pn.Column(sizing_mode="stretch_width") for _ in TABS]
        self.tabs = pn.Tabs(*zip(TABS, self._slots, strict=True), dynamic=True,
                            sizing_mode="stretch_width", css_classes=["c360-tabs"])
        self.page(0)
        self.tabs.param.watch(lambda _: self.tick(), "active")
        self._layout = pn.Column(_header(user, scope), self.tabs, sizing_mode="stretch_width",
                                 max_width=1700, styles={"background": PAGE_BACKGROUND})
        self._callbacks: list[Any] = []
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            self.start()

    def page(self, index: int) -> Any:
        """The page of tab ``index``, built (and put in its tab) on first use."""
        built = self._pages.get(index)
        if built is None:
            store, feed, scope, user, settings = self._args
            if index == 0:
                built = OverviewPage(feed)
            elif index == 1:
                built = FinderPage(feed, scope, on_open=self.show_customer)
            else:
                built = CustomerView(store, scope, user, settings)
            self._pages[index] = built
            self._slots[index].append(built)
        return built

    @property
    def overview(self) -> OverviewPage:
        return self.page(0)

    @property
    def finder(self) -> FinderPage:
        return self.page(1)

    @property
    def customer(self) -> CustomerView:
        return self.page(2)

    def __panel__(self) -> pn.viewable.Viewable:
        return self._layout

    def start(self) -> None:
        """Refresh periodically in this session: the page showing once a second, and the
        360 view ten times a second while it shows (a callback per session costs the
        server even when it has nothing to do, so the fast one runs only then)."""
        if self._callbacks:
            return
        self._callbacks = [pn.state.add_periodic_callback(self.tick, OVERVIEW_MS)]
        self._fast = pn.state.add_periodic_callback(self.customer_tick, PERIOD_MS,
                                                    start=self.tabs.active == 2)
        self._callbacks.append(self._fast)
        self.tabs.param.watch(self._pace, "active")

    def _pace(self, event: Any) -> None:
        if event.new == 2 and not self._fast.running:
            self._fast.start()
        elif event.new != 2 and self._fast.running:
            self._fast.stop()

    def stop(self) -> None:
        for cb in self._callbacks:
            cb.stop()
        self._callbacks = []

    def show_customer(self, customer_id: str) -> None:
        self.customer.open(customer_id)
        self.tabs.active = TABS.index("Customer 360")

    def tick(self) -> None:
        """Refresh the page that is showing (the others catch up when shown)."""
        self.page(self.tabs.active).refresh()

    def customer_tick(self) -> None:
        if self.tabs.active == 2:
            self.customer.refresh()


def app(store: EntityStore | None = None, settings: Settings | None = None,
        anonymous: Scope = NARROW) -> pn.viewable.Viewable | pn.viewable.Viewer:
    """The dashboard for one server session (the shared store unless one is given)."""
    from c360.run import shared as live

    try:
        if store is None:
            store = live.shared_store()
            pipeline = live.shared_pipeline()
            settings = settings or (pipeline.settings if pipeline is not None else None)
        user = pn.state.user or ""
        scope = scope_for(user, anonymous=anonymous)
    except C360Error as exc:
        return error_page(str(exc))
    return Dashboard(store, shared_feed(store, settings), scope, user, settings)


if pn.state.served:  # `panel serve dashboards/app.py`; importing this module starts nothing
    app().servable(title="c360 dashboard")
