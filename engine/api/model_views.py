"""The handlers of model slots: `GET /v1/models` (what each slot runs, its breaker and
rollout) and `POST /v1/rollout` (a rollout command, written to the control topic)."""

from __future__ import annotations

import orjson
from aiohttp import web

from .http import REQUEST_ID, ApiError, json_response
from .views import VIEWS, ServedWorker

__all__ = ["models", "rollout"]


async def models(request: web.Request) -> web.Response:
    """The topology's feature set and each model slot: active version, thresholds, breaker,
    rollout."""
    worker = request.app[VIEWS].worker
    topo, reg = worker.topology, worker.models
    slots = [] if reg is None else [
        {"name": s.name, "active": s.active.ref if s.active else None,
         "last_error": s.last_error,
         "thresholds": (s.active.manifest.thresholds.model_dump()
                        if s.active else None),
         "breaker": worker.breaker_state(s.name),
         "rollout": _rollout_of(worker, s.name)}
        for s in sorted(reg.slots.values(), key=lambda s: s.name)]
    return json_response({"topology": topo.name, "feature_set": topo.features.versioned_name,
                          "features": list(topo.features.names), "models": slots})


def _rollout_of(worker: ServedWorker, slot: str) -> dict | None:
    """The slot's rollout state as this worker applied it (None: no rollout recorded),
    with whether the candidate loaded here."""
    control = worker.control
    state = control.log.slots.get(slot) if control is not None else None
    if state is None:
        return None
    plan = control.decider.plan
    doc = state.summary()
    if plan.rollout is not None and plan.rollout.slot == slot:
        doc["candidate_loaded"] = plan.candidate is not None
        doc["candidate_error"] = plan.candidate_error
    return doc


async def rollout(request: web.Request) -> web.Response:
    """A rollout command, as `streamwise rollout` writes it to the control topic (the
    staged version's contract is checked here; offline validation is the CLI's)."""
    from ..rollout.command import ACTIONS, RolloutRequest
    from ..worker.control import RolloutRejected, submit

    ctx = request.app[VIEWS]
    worker = ctx.worker
    if not ctx.token_set:
        raise ApiError(403, "rollout changes need the worker to run with --api-token")
    if worker.control is None or worker.models is None:
        raise ApiError(404, "this worker's topology has no models to roll out")
    if request.content_type != "application/json":
        raise ApiError(415, "send {action, target, ...} as application/json")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise ApiError(400, "body is not JSON") from None
    if not isinstance(body, dict) or body.get("action") not in ACTIONS[2:]:
        raise ApiError(400, f"action must be one of {', '.join(ACTIONS[2:])}")
    fields = {"target": str, "percent": (int, float), "sample": (int, float),
              "steps": str, "dwell_s": (int, float), "min_events": int, "reason": str}
    unknown = sorted(set(body) - set(fields) - {"action"})
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}")
    for name, kind in fields.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ApiError(400, f"{name} has the wrong type")
    kw = {k: v for k, v in body.items() if k != "action" and v is not None}
    if "reason" in kw:
        kw["reason"] = kw["reason"][:500]
    req = RolloutRequest(action=body["action"], **kw)
    try:
        state = await submit(worker.control, worker.cfg.kafka, worker.topics.control,
                             worker.models, req, f"api:{request[REQUEST_ID]}")
    except RolloutRejected as exc:
        raise ApiError(exc.status, str(exc)) from None
    return json_response(state.summary())
