"""HTTP adapter of a worker: table lookups routed to the key's owner, online scoring, models,
health, readiness, metrics and the OpenAPI document. Contract: DESIGN.md §3, openapi.json.

Routing (`routing`): a key's partition is owned by one worker of the consumer group (the
members topic says which, see `engine.routing`). A request for a key this worker does not own
is forwarded once to the owner (the hop is marked, so it never loops); while nobody owns the
partition (a rebalance) the answer is 503 with Retry-After. Values are never served from a
partition this worker does not own, so `stale` is false unless a future standby read says
otherwise.

Security (`guard`, `views`): `/v1/*` needs the bearer token when one is set (compared in
constant time, never logged); `?update=true` on `/v1/score` (it writes to the input topic) is
refused when no token is configured. Limits (`http`): URL length, key length and character
set, table names, body size, and in-flight requests (429 past them, at once). Errors are JSON
with a request id, no traces.

Slow clients: a connection that has not sent a whole request head within `IDLE_TIMEOUT_S`
(after connecting, or after its previous answer: an idle keep-alive) is closed, and a body not
received within `BODY_TIMEOUT_S` is answered 408, so no client holds an in-flight slot for
longer. A client that goes away mid-request is counted with status 499 and logged at debug
level: it is not a server error. Requests aiohttp's HTTP parser refuses (a header over
8,190 bytes, a non-ASCII path, not HTTP at all) get the same JSON error, without echoing the
input, when the app runs under `ApiRunner` (`app`); no response names the server's software.

Modules: `http` (limits, header names, JSON errors, body and query parsing), `guard` (the
middleware), `routing` (owner routing, `owned_route`), `views` (the handlers and the
`ServedWorker` interface they read), `model_views` (model slots, rollouts), `app` (`build_app`,
`ApiRunner`).
"""

from .app import ApiRunner, build_app
from .http import MAX_REQUEST_LINE_BYTES, MAX_URL_CHARS

__all__ = ["MAX_REQUEST_LINE_BYTES", "MAX_URL_CHARS", "ApiRunner", "build_app"]
