"""The merchandiser's console at ``/console``: server-rendered pages (Jinja2 templates and a little JavaScript, every
asset shipped in this package: nothing is fetched from another host) over the same operations the API offers.

Pages: the rail preview (``/console/rail``), rule sets (``/console/rules…``: edit with errors at their field, diff,
shadow and its report, publish, roll back, conflicts), experiments (``/console/experiments…``), catalog health
(``/console/health``) and models (``/console/models``). Behaviour lives where the API's lives — ``rules.admin``,
``rules.reports``, ``rules.conflicts``, ``experiments.admin``, ``monitor`` — and this module only shapes it.

Access (``session.py``): ``read`` scope to look, ``admin`` to change; the key travels in an HttpOnly, SameSite=Strict
cookie set by the login form, and every form carries a CSRF token.
"""

from __future__ import annotations

import math
import secrets
import time
from datetime import datetime, timezone
from importlib.resources import files
from typing import Any, Callable
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from shelfwise.api.console import jsondoc, models_panel, session, svg
from shelfwise.domain import EventType
from shelfwise.experiments.admin import Conflict as ExperimentConflict, ExperimentInvalid
from shelfwise.experiments.store import NotFound as ExperimentNotFound
from shelfwise.monitor.health import catalog_health
from shelfwise.release import GateBlocked, ReleaseConflict, UnknownVersion
from shelfwise.request import RecRequest, new_request_id
from shelfwise.rules import admin
from shelfwise.rules.admin import rules_db_path
from shelfwise.rules.conflicts import find_conflicts, involved
from shelfwise.rules.reports import build_shadow_report
from shelfwise.rules.schema import RuleSet, RuleSetInvalid
from shelfwise.rules.store import NotFound
from shelfwise.stores.protocols import Interaction, ShopperState

STATIC = {"console.css": "text/css", "console.js": "text/javascript", "favicon.svg": "image/svg+xml"}
# No other host, ever: scripts, styles, fonts and frames from this origin only. Images may come from the shop's own
# image host (catalog image URLs), so img-src allows any https/http source.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https: http:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
IMAGE_ATTRIBUTES = ("image_url", "image", "image_link", "thumbnail", "img")
PAGES = (("rail", "Rail preview"), ("rules", "Rules"), ("experiments", "Experiments"), ("health", "Catalog health"),
         ("models", "Models"))
MAX_CLICKS = 20
# What a page reads at most, so it answers in well under 300 ms however busy the shop: the latest sampled requests of
# a shadow report (the API's report reads up to 100,000), and exposure-log rows behind the catalog-health shares.
SHADOW_RECORDS = 1_000
SHADOW_RECORDS_ALL = 100_000  # "read them all" on the page: the API's bound
HEALTH_SAMPLE_ROWS = 5_000

_env = Environment(loader=PackageLoader("shelfwise.api.console", "templates"), autoescape=select_autoescape(),
                   trim_blocks=True, lstrip_blocks=True)


def _when(ts: Any) -> str:
    if ts is None or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return "–"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _pct(x: Any, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}%}"


def _num(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "∞" if x > 0 else "–"
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


_env.filters.update(when=_when, pct=_pct, num=_num)


def image_of(item: Any) -> str | None:
    """An item's image URL from its catalog attributes (http(s) or a path on the shop's host), else None."""
    attrs = getattr(item, "attributes", None) or {}
    for name in IMAGE_ATTRIBUTES:
        v = attrs.get(name)
        if isinstance(v, str) and v.startswith(("https://", "http://", "/")) and not v.startswith("//"):
            return v
    return None


def build_router(engine: Callable[[], Any], settings: Any, verifier: Any, limiter: Any = None) -> APIRouter:
    """``engine()`` returns the running ``Shelfwise``; ``verifier`` is the API's key verifier (the login form
    checks keys with it)."""
    r = APIRouter(include_in_schema=False)
    auth_on = settings.security.auth == "required"

    def page(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        key = session.key_of(request)
        csrf, fresh = session.csrf_token(request)
        body = _env.get_template(template).render(
            request=request, pages=PAGES, active=ctx.pop("active", ""), can_change=session.can_change(request, auth_on),
            csrf=csrf, key_name=key.name if key is not None else None,
            scopes=list(key.scopes) if key is not None else [], auth_on=auth_on,
            msg=request.query_params.get("msg", "")[:500], **ctx)
        resp = HTMLResponse(body, status_code=status, headers={"Content-Security-Policy": CSP,
                                                               "Cache-Control": "no-store",
                                                               "X-Frame-Options": "DENY",
                                                               "Referrer-Policy": "same-origin"})
        if fresh is not None:
            session.set_csrf_cookie(resp, request, fresh)
        return resp

    def back(url: str, msg: str = "") -> RedirectResponse:
        return RedirectResponse(url + (("&" if "?" in url else "?") + urlencode({"msg": msg}) if msg else ""),
                                status_code=303)

    async def change(request: Request) -> tuple[dict[str, str] | None, Response | None]:
        """The form of a change, or the refusal to send (403: no admin scope, or a bad CSRF token)."""
        if not session.can_change(request, auth_on):
            return None, page(request, "refused.html", 403, reason="your key has no admin scope: it can look, not "
                                                                   "change")
        try:
            return await session.form(request), None
        except session.Refused as e:
            return None, page(request, "refused.html", 403, reason=str(e))

    # ---- assets, login ------------------------------------------------------------------------------------
    static = files("shelfwise.api.console") / "static"

    @r.get("/console/static/{name}")
    def asset(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such asset")
        return Response((static / name).read_bytes(), media_type=STATIC[name],
                        headers={"Cache-Control": "public, max-age=3600"})

    @r.get("/console")
    def home() -> Response:
        return RedirectResponse("/console/rail", status_code=303)

    @r.get("/console/login")
    def login_page(request: Request, next: str = "/console/rail", why: str = "") -> Response:
        reason = {"key": "Sign in with an API key to use the console.",
                  "scope": "Your key cannot open the console: it needs the read scope (admin to change things)."
                  }.get(why, "")
        return page(request, "login.html", next=_safe_next(next), reason=reason)

    @r.post("/console/login")
    async def login(request: Request) -> Response:
        try:
            fields = await session.form(request)
        except session.Refused as e:
            return page(request, "login.html", 403, next="/console/rail", reason=str(e))
        token = fields.get("key", "").strip()
        nxt = _safe_next(fields.get("next", "/console/rail"))
        if not auth_on:
            return back(nxt)
        key = await run_in_threadpool(verifier.verify, token) if token else None
        if key is None or key.kind == "publishable" or not {"read", "admin"} & set(key.scopes):
            if limiter is not None:  # failed sign-ins count against the address, as failed API calls do
                client = (request.client.host if request.client else "unknown")
                limiter.acquire([("c:" + client, settings.security.rate_per_client,
                                  settings.security.burst_per_client)])
            reason = ("unknown or revoked key" if key is None else
                      "a publishable key cannot open the console" if key.kind == "publishable" else
                      f"the key {key.name!r} has neither the read nor the admin scope")
            return page(request, "login.html", 401, next=nxt, reason=reason)
        resp = back(nxt)
        session.set_login(resp, request, token)
        return resp

    @r.post("/console/logout")
    async def logout(request: Request) -> Response:
        resp = RedirectResponse("/console/login", status_code=303)
        session.clear_login(resp, request)
        return resp

    # ---- rail preview -------------------------------------------------------------------------------------
    def preview(q: dict[str, str]) -> dict[str, Any]:
        eng = engine()
        configured = eng.settings.models.placements  # rails (a rerank placement needs the shop's list)
        placements = sorted(n for n, p in configured.items() if p.kind != "rerank")
        placement = q.get("placement") or "homepage"
        out: dict[str, Any] = {"placements": placements, "q": q, "answer": None, "error": None, "clicks": []}
        if placement not in placements:
            out["error"] = f"unknown placement {placement[:64]!r}"
            return out
        try:
            k = max(1, min(int(q.get("k") or 12), eng.settings.api.max_k))
        except ValueError:
            out["error"] = "k must be a whole number"
            return out
        split = lambda s: [x.strip() for x in (s or "").split(",") if x.strip()][:200]  # noqa: E731
        clicks = split(q.get("clicks"))[-MAX_CLICKS:]
        out["clicks"] = clicks
        item_id = q.get("item_id") or None
        if configured[placement].kind == "item" and not item_id:
            out["error"] = f"{placement} is a product page: give its item_id (or click a product's “open its page”)"
            return out
        user = q.get("user_id") or None
        req = RecRequest(placement=placement, shopper=user, item_id=item_id, cart=split(q.get("cart")), k=k,
                         device=q.get("device") or None, segments=split(q.get("segment")),
                         request_id="console-" + new_request_id(), explain=True)
        if clicks:  # a simulated session: the shopper's stored history (if any), then these product views
            now = time.time()
            base = eng.shopper_state(eng.pseudonyms.shopper(user)) if user else None
            recent = list(base.recent) if base else []
            recent += [Interaction(c, int(EventType.product_viewed), now - 30.0 * (len(clicks) - i))
                       for i, c in enumerate(clicks)]
            req.state = ShopperState(recent=recent[-eng.settings.models.history_length:],
                                     purchased=set(base.purchased) if base else set())
        if not eng.anchors_known(req) and eng.unknown_anchor(req) is not None:
            out["error"] = "no such item in the catalog: " + (item_id or ", ".join(req.cart))
            return out
        answer = eng.recommend_many([req], log=False)[0]  # a preview is not an impression
        wanted = [x.item_id for x in answer.items] + clicks + ([item_id] if item_id else [])
        catalog = eng.catalog.get(list(dict.fromkeys(wanted)))
        out["answer"] = answer
        out["catalog"] = catalog
        out["images"] = {iid: image_of(it) for iid, it in catalog.items()}
        out["anchor"] = catalog.get(item_id) if item_id else None
        return out

    @r.get("/console/rail")
    def rail(request: Request) -> Response:
        q = {k: v[:1024] for k, v in request.query_params.items() if k in ("placement", "user_id", "item_id", "cart",
                                                                           "clicks", "k", "device", "segment")}

        def link(**changes: str) -> str:
            merged = {k: v for k, v in ({**q, **changes}).items() if v}
            return "/console/rail?" + urlencode(merged)

        def clicked(item_id: str) -> str:
            return link(clicks=",".join([*[c for c in (q.get("clicks") or "").split(",") if c], item_id]))

        return page(request, "rail.html", active="rail", **preview(q), dumps=_dumps, link=link, clicked=clicked)

    # ---- rules ----------------------------------------------------------------------------------------------
    def store():
        return engine().merch.store

    def live_with(ruleset_id: str | None = None, document: RuleSet | None = None) -> list[tuple[str, RuleSet]]:
        """The live rule sets, with ``document`` in place of ``ruleset_id``'s live version (as shadow mode runs)."""
        snap = engine().merch.source.snapshot()
        out = [(rid, rs) for rid, _, rs in snap.live if rid != ruleset_id]
        if ruleset_id is not None and document is not None:
            out.append((ruleset_id, document))
        return out

    def conflicts_of(rulesets: list[tuple[str, RuleSet]]) -> list[dict[str, Any]]:
        eng = engine()
        items = eng.pipeline.items
        return find_conflicts(rulesets, items, eng.merch.stage.facts(items))

    @r.get("/console/rules")
    def rules_list(request: Request) -> Response:
        sets = admin.list_rulesets(store(), engine().settings.rules.shadow_share)
        conflicts = conflicts_of(live_with())
        return page(request, "rules.html", active="rules", rulesets=sets, conflicts=conflicts)

    def ruleset_view(ruleset_id: str, version: int | None) -> dict[str, Any]:
        got = admin.get_ruleset(store(), ruleset_id, version)
        vers = admin.versions(store(), ruleset_id)
        audit = [a.__dict__ for a in store().audit(ruleset_id)][-30:]
        doc = RuleSet.model_validate(got["document"])
        conflicts = conflicts_of(live_with(ruleset_id, doc))
        marks = involved(conflicts)
        rules = [{"index": i, "id": rule.id, "type": rule.action.type, "priority": rule.priority,
                  "enabled": rule.enabled, "key": f"{ruleset_id}/{rule.id}",
                  "conflicts": marks.get(f"{ruleset_id}/{rule.id}", [])} for i, rule in enumerate(doc.rules)]
        return {"rs": got, "versions": vers, "audit": audit, "conflicts": conflicts, "rules": rules,
                "doc_text": jsondoc.text(got["document"])}

    @r.get("/console/rules/{ruleset_id}")
    def ruleset(request: Request, ruleset_id: str, version: int | None = None) -> Response:
        if ruleset_id == "new":
            return editor(request, "", {"description": "", "rules": []}, [], True)
        try:
            view = ruleset_view(ruleset_id, version)
        except NotFound as e:
            return page(request, "missing.html", 404, active="rules", what=str(e))
        return page(request, "ruleset.html", active="rules", **view)

    def editor(request: Request, ruleset_id: str, document: Any, errors: list[dict[str, str]], new: bool,
               status: int = 200, warnings: list[dict[str, str]] = (), raw: str | None = None,
               comment: str = "", notice: str = "") -> Response:
        doc_lines = jsondoc.lines(document) if raw is None else []
        loose = jsondoc.place_errors(doc_lines, errors) if raw is None else errors
        return page(request, "rule_edit.html", status, active="rules", ruleset_id=ruleset_id, new=new,
                    text=raw if raw is not None else jsondoc.text(document), lines=doc_lines, errors=errors,
                    loose=loose, warnings=list(warnings), comment=comment, notice=notice)

    @r.get("/console/rules/{ruleset_id}/edit")
    def edit(request: Request, ruleset_id: str, version: int | None = None) -> Response:
        try:
            got = admin.get_ruleset(store(), ruleset_id, version)
        except NotFound as e:
            return page(request, "missing.html", 404, active="rules", what=str(e))
        doc = {k: v for k, v in got["document"].items() if k != "id"}
        return editor(request, ruleset_id, doc, [], False)

    @r.post("/console/rules/save")
    async def save(request: Request) -> Response:
        fields, refused = await change(request)
        if refused is not None:
            return refused
        rid = fields.get("ruleset_id", "").strip()
        new = fields.get("new") == "1"
        raw = fields.get("document", "")
        comment = fields.get("comment", "")[:2000]
        action = fields.get("action", "save")
        if not rid:
            return editor(request, rid, {}, [{"path": "(rule set id)", "reason": "give the rule set an id"}], new,
                          422, raw=raw, comment=comment)
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            return editor(request, rid, {}, [{"path": "", "reason": f"not valid JSON: {e}"}], new, 422, raw=raw,
                          comment=comment)
        if isinstance(document, dict):
            document.setdefault("id", rid)

        def go() -> tuple[dict[str, Any] | None, list[dict[str, str]], list[dict[str, str]]]:
            eng = engine()
            placements = eng.settings.models.placements
            facts, model = admin.catalog_facts(eng.catalog.all()), eng.pipeline.items
            try:
                if action == "validate":
                    _, warnings = admin.validate(document, rid, placements, facts, model)
                    return None, [], warnings
                out = admin.put_ruleset(store(), rid, document, session.author(request), comment, placements,
                                        publish=action == "publish", shadow=action == "shadow", catalog=facts,
                                        model=model)
                eng.merch.rules_changed()
                return out, [], out.get("warnings", [])
            except RuleSetInvalid as e:
                return None, e.errors, []

        out, errors, warnings = await run_in_threadpool(go)
        shown = {k: v for k, v in document.items() if k != "id"} if isinstance(document, dict) else document
        if errors:
            return editor(request, rid, shown, errors, new, 422, comment=comment)
        if out is None:
            return editor(request, rid, shown, [], new, warnings=warnings, comment=comment,
                          notice="valid: nothing was saved")
        did = {"publish": "saved and published", "shadow": "saved as a draft, running in shadow"}.get(
            action, "saved as a draft")
        note = f"v{out['version']} {did}" + (f"; {len(warnings)} warning(s): " + "; ".join(
            f"{w['path']}: {w['reason']}" for w in warnings[:3]) if warnings else "")
        return back(f"/console/rules/{rid}", note)

    async def ruleset_action(request: Request, ruleset_id: str,
                             fn: Callable[[dict[str, str], str], str]) -> Response:
        fields, refused = await change(request)
        if refused is not None:
            return refused

        def go() -> str:
            try:
                done = fn(fields, session.author(request))
            except (NotFound, admin.Conflict, RuleSetInvalid, ValueError) as e:
                return f"not done: {e}"
            engine().merch.rules_changed()
            return done
        return back(f"/console/rules/{ruleset_id}", await run_in_threadpool(go))

    def _version(fields: dict[str, str]) -> int | None:
        v = fields.get("version", "").strip()
        if not v:
            return None
        if not v.isdigit() or not 1 <= int(v) <= 2**31 - 1:
            raise ValueError(f"version must be a positive whole number, not {v[:20]!r}")
        return int(v)

    def checks() -> tuple[dict[str, Any], Any]:
        eng = engine()
        return admin.catalog_facts(eng.catalog.all()), eng.pipeline.items

    @r.post("/console/rules/{ruleset_id}/publish")
    async def publish(request: Request, ruleset_id: str) -> Response:
        def fn(f: dict[str, str], who: str) -> str:
            out = admin.publish(store(), ruleset_id, _version(f), who, f.get("comment", "")[:2000], *checks())
            return f"v{out['version']} is live" + _warned(out)
        return await ruleset_action(request, ruleset_id, fn)

    @r.post("/console/rules/{ruleset_id}/rollback")
    async def rollback(request: Request, ruleset_id: str) -> Response:
        def fn(f: dict[str, str], who: str) -> str:
            version = _version(f)
            if version is None:
                raise ValueError("choose the version to roll back to")
            out = admin.rollback(store(), ruleset_id, version, who, f.get("comment", "")[:2000], *checks())
            return f"rolled back: v{out['version']} (a copy of v{version}) is live" + _warned(out)
        return await ruleset_action(request, ruleset_id, fn)

    @r.post("/console/rules/{ruleset_id}/shadow")
    async def shadow(request: Request, ruleset_id: str) -> Response:
        def fn(f: dict[str, str], who: str) -> str:
            if f.get("stop") == "1":
                admin.set_shadow(store(), ruleset_id, None, None, who, stop=True)
                return "shadow stopped"
            share = f.get("share", "").strip()
            value = float(share) / 100 if share else None
            if value is not None and not 0 <= value <= 1:
                raise ValueError("the shadow share is a percentage between 0 and 100")
            out = admin.set_shadow(store(), ruleset_id, _version(f), value, who)
            return f"v{out['shadow_version']} runs in shadow"
        return await ruleset_action(request, ruleset_id, fn)

    @r.get("/console/rules/{ruleset_id}/diff")
    def diff(request: Request, ruleset_id: str, a: int | None = None, b: int | None = None) -> Response:
        try:
            st = admin.get_ruleset(store(), ruleset_id)
            b = b or st["latest_version"]
            a = a or st["live_version"] or max(b - 1, 1)
            old, new = store().version(ruleset_id, a), store().version(ruleset_id, b)
        except NotFound as e:
            return page(request, "missing.html", 404, active="rules", what=str(e))
        rows = jsondoc.diff(old.document, new.document, f"v{a}", f"v{b}")
        return page(request, "rule_diff.html", active="rules", ruleset_id=ruleset_id, a=a, b=b, rows=rows,
                    versions=admin.versions(store(), ruleset_id))

    @r.get("/console/rules/{ruleset_id}/shadow-report")
    def shadow_report(request: Request, ruleset_id: str, version: int | None = None,
                      hours: float | None = None, all: bool = False) -> Response:
        eng = engine()
        items = eng.pipeline.items
        try:
            rep = build_shadow_report(eng.merch.store, eng.merch.log, ruleset_id, version,
                                      hours if hours and hours > 0 else None, items, eng.merch.stage.facts(items),
                                      limit=SHADOW_RECORDS_ALL if all else SHADOW_RECORDS)
        except NotFound as e:
            return page(request, "missing.html", 404, active="rules", what=str(e))
        return page(request, "shadow.html", active="rules", ruleset_id=ruleset_id, rep=rep, hours=hours,
                    limit=SHADOW_RECORDS_ALL if all else SHADOW_RECORDS, version=version)

    # ---- experiments -----------------------------------------------------------------------------------------
    def experiments():
        from shelfwise.api.experiments import service_of

        return service_of(engine())

    @r.get("/console/experiments")
    def experiment_list(request: Request) -> Response:
        return page(request, "experiments.html", active="experiments", experiments=experiments().list(),
                    text=_EXAMPLE_EXPERIMENT, errors=[])

    @r.post("/console/experiments")
    async def experiment_create(request: Request) -> Response:
        fields, refused = await change(request)
        if refused is not None:
            return refused
        raw = fields.get("document", "")

        def go() -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
            try:
                document = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                return None, [{"path": "", "reason": f"not valid JSON: {e}"}]
            try:
                out = experiments().create(document, session.author(request), fields.get("comment", "")[:2000],
                                           start=fields.get("start") == "1")
            except ExperimentInvalid as e:
                return None, e.errors
            except (ExperimentConflict, ExperimentNotFound) as e:
                return None, [{"path": "", "reason": str(e)}]
            engine().experiments.reload()
            return out, []
        out, errors = await run_in_threadpool(go)
        if errors:
            return page(request, "experiments.html", 422, active="experiments", experiments=experiments().list(),
                        text=raw, errors=errors)
        return back(f"/console/experiments/{out['id']}", f"experiment {out['id']} created ({out['status']})")

    @r.get("/console/experiments/{experiment_id}")
    def experiment(request: Request, experiment_id: str) -> Response:
        svc = experiments()
        try:
            got = svc.get(experiment_id)
            res = svc.results(experiment_id)
        except ExperimentNotFound as e:
            return page(request, "missing.html", 404, active="experiments", what=str(e))
        return page(request, "experiment.html", active="experiments", e=got, res=res, chart=_lift_chart(res),
                    dumps=_dumps)

    @r.post("/console/experiments/{experiment_id}/{action}")
    async def experiment_action(request: Request, experiment_id: str, action: str) -> Response:
        if action not in ("start", "ramp", "stop"):
            raise HTTPException(404, "no such action")
        fields, refused = await change(request)
        if refused is not None:
            return refused

        def go() -> str:
            svc, who = experiments(), session.author(request)
            try:
                if action == "start":
                    svc.start(experiment_id, who, fields.get("comment", "")[:2000])
                    done = "started"
                elif action == "ramp":
                    try:
                        pct = float(fields.get("traffic", "").strip().rstrip("%"))
                    except ValueError:
                        raise ValueError("traffic is a percentage, e.g. 50") from None
                    if not 0 < pct <= 100:
                        raise ValueError("traffic is a percentage above 0 and at most 100")
                    svc.ramp(experiment_id, pct / 100, who, fields.get("comment", "")[:2000])
                    done = f"ramped to {pct:g} %"
                else:
                    svc.stop(experiment_id, who, fields.get("reason", "")[:2000], fields.get("serve") or None)
                    done = "stopped"
            except ExperimentInvalid as e:
                return "not done: " + "; ".join(f"{x['path']}: {x['reason']}" for x in e.errors)
            except (ExperimentConflict, ExperimentNotFound, ValueError) as e:
                return f"not done: {e}"
            engine().experiments.reload()
            return done
        return back(f"/console/experiments/{experiment_id}", await run_in_threadpool(go))

    # ---- catalog health --------------------------------------------------------------------------------------
    @r.get("/console/health")
    def health(request: Request, hours: float | None = None) -> Response:
        eng = engine()
        hours = hours if hours is not None and 0 < hours <= 24 * 366 else eng.settings.rules.zero_impression_hours
        eng.merch.log.flush()
        rep = catalog_health(eng.pipeline.items, eng.merch.log.last_shown, rules_db_path(eng.settings), hours,
                             eng.settings.monitor.new_item_days, sample_limit=HEALTH_SAMPLE_ROWS,
                             log_started=eng.merch.log.started_at())
        ids = [x["item_id"] for part in ("zero_impressions", "new_items", "out_of_stock_shown")
               for x in rep[part]["examples"]]
        titles = {iid: it.title for iid, it in eng.catalog.get(ids).items()}
        cats = svg.paired_bars([(c["category"], c["catalog_share"], c["impression_share"]) for c in rep["categories"]],
                               ("servable catalog", "impressions"), title="share by category")
        bands = svg.paired_bars([(b["band"], b["catalog_share"], b["impression_share"])
                                 for b in rep["margin"]["bands"]], ("servable catalog", "impressions"),
                                title="share by margin band")
        return page(request, "health.html", active="health", rep=rep, titles=titles, cat_chart=cats,
                    band_chart=bands)

    # ---- models ----------------------------------------------------------------------------------------------
    @r.get("/console/models")
    def models(request: Request, drift: bool = False) -> Response:
        eng = engine()
        view = models_panel.versions(eng)
        report, drift_error = None, None
        if drift:
            from shelfwise.monitor.drift import publish as publish_drift, run_drift
            from shelfwise.monitor.windows import WindowError

            try:
                rep = run_drift(eng)
                publish_drift(rep)
                report = rep.to_dict()
            except WindowError as e:
                drift_error = str(e)
        return page(request, "models.html", active="models", m=view, drift=report, drift_error=drift_error)

    @r.post("/console/models/{action}")
    async def model_action(request: Request, action: str) -> Response:
        if action not in ("_promote", "_rollback"):
            raise HTTPException(404, "no such action")
        fields, refused = await change(request)
        if refused is not None:
            return refused

        def go() -> str:
            rel, who = engine().releases, session.author(request)
            try:
                if action == "_promote":
                    version = fields.get("version", "").strip()[:200]
                    out = rel.promote(version, who, immediate=fields.get("now") == "1")
                    share = (out.get("rollout") or {}).get("share")
                    return f"{version}: {out['action']}" + (f" (now {share:.0%} of shoppers)" if share else "")
                out = rel.rollback(who, fields.get("reason", "")[:2000])
                return f"{out['action']}: {out.get('version', '')}"
            except (GateBlocked, UnknownVersion, ReleaseConflict) as e:
                return f"not done: {e}"
        return back("/console/models", await run_in_threadpool(go))

    return r


def _safe_next(url: str) -> str:
    """Only a console page (no other host, no scheme-relative URL)."""
    return url if url.startswith("/console") and not url.startswith("//") and "\\" not in url else "/console/rail"


def _warned(out: dict[str, Any]) -> str:
    w = out.get("warnings") or []
    return f"; {len(w)} warning(s): " + "; ".join(f"{x['path']}: {x['reason']}" for x in w[:3]) if w else ""


def _dumps(x: Any) -> str:
    return orjson.dumps(x, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
                        default=str).decode()


def _lift_chart(res: dict[str, Any]) -> Any:
    a = res.get("analysis")
    if not a:
        return None
    rows = [(f"{m} ({v})", c["relative"], tuple(c["relative_ci"]) if c.get("relative_ci") else None)
            for m, e in a.get("metrics", {}).items() for v, c in e.get("comparisons", {}).items()
            if c.get("relative") is not None]
    return svg.forest(rows)


_EXAMPLE_EXPERIMENT = jsondoc.text({
    "id": "home-als-" + secrets.token_hex(2), "name": "More ALS on the homepage", "layer": "ranking",
    "layer_range": [0, 0.5], "traffic": 0.1, "placements": ["homepage"], "primary_metric": "conversion",
    "variants": [{"name": "control", "share": 0.5},
                 {"name": "als", "share": 0.5,
                  "config": {"placements": {"homepage": {"weights": {"als": 1.0, "covisit": 0.5}}}}}]})
