"""The worker's OpenAPI document, built from the topology it runs: the body of
``POST /v1/score`` is the topology's event contract, and the entity key, tables and feature
names are its own; the rest is the engine's HTTP contract (DESIGN.md §3). ``engine/openapi.json``
is the fraud topology's document, written by ``scripts/gen_openapi.py`` (a test keeps it
current)."""

from __future__ import annotations

import json
from typing import Any

from ..topology import Topology

__all__ = ["document", "render"]

KEY = {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"}
err = {"$ref": "#/components/responses/Error"}


num_or_null = {"type": ["number", "null"]}
decision = {
    "type": "object",
    "required": [
        "decision_id",
        "event_id",
        "key",
        "score",
        "decision",
        "model",
        "path",
        "reasons",
        "features",
        "stage_ms",
        "event_ts_ms",
        "decided_at_ms",
    ],
    "properties": {
        "decision_id": {"type": "string"},
        "event_id": {"type": "string"},
        "key": {"type": "string"},
        "score": {"type": ["number", "null"]},
        "decision": {"type": "string", "enum": ["approve", "review", "decline"]},
        "model": {"type": ["string", "null"]},
        "path": {
            "type": "string",
            "enum": [
                "model",
                "canary",
                "fallback:last_score",
                "fallback:backup_model",
                "fallback:rules",
                "abstain",
            ],
        },
        "reasons": {"type": "array", "items": {"type": "string"}},
        "features": {"type": "object", "additionalProperties": num_or_null},
        "shadow": {
            "type": "object",
            "description": "a rollout's shadow candidate on this event (never acted on); "
            "only while one is shadowed",
            "required": ["model", "score", "decision"],
            "properties": {
                "model": {"type": "string"},
                "score": {"type": ["number", "null"]},
                "decision": {"enum": ["approve", "review", "decline", None]},
                "reason": {"type": "string"},
            },
        },
        "context": {
            "type": "object",
            "description": "the event's fields the topology's decision_context names (e.g. "
            "merchant_id with topologies.fraud:WITH_MERCHANT_RISK); only when it names some",
        },
        "stage_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        "event_ts_ms": {"type": "integer"},
        "decided_at_ms": {"type": "integer"},
    },
}
scored = {
    "allOf": [
        {"$ref": "#/components/schemas/Decision"},
        {
            "type": "object",
            "required": ["duplicate", "served_by", "budget_ms"],
            "properties": {
                "duplicate": {
                    "type": "boolean",
                    "description": "the event id was decided before: its stored decision",
                },
                "served_by": {"type": "string"},
                "budget_ms": {"type": "integer"},
                "queued": {
                    "type": "boolean",
                    "description": "update=true: the event was appended to the input topic",
                },
            },
        },
    ]
}
error = {
    "type": "object",
    "required": ["error", "status", "request_id"],
    "properties": {
        "error": {"type": "string"},
        "status": {"type": "integer"},
        "request_id": {"type": "string"},
        "reason": {"type": "string"},
    },
}
window = {
    "type": "object",
    "required": ["start_ms", "end_ms", "value"],
    "properties": {
        "start_ms": {"type": "integer"},
        "end_ms": {"type": "integer"},
        "value": {"type": "object", "additionalProperties": True},
    },
}
replica_fields = {
    "lag_ms": {
        "type": "integer",
        "minimum": 0,
        "description": "0 from the owner; from a standby replica, ms since it last held all of the partition's changelog (at least the time since the owner last answered, when it does not)",
    },
    "standby": {"type": "boolean", "description": "answered from a standby replica, not the owner"},
}
table_value = {
    "type": "object",
    "required": [
        "table",
        "key",
        "value",
        "windows",
        "watermark_ms",
        "partition",
        "served_by",
        "stale",
        "lag_ms",
        "standby",
    ],
    "properties": {
        "table": {"type": "string"},
        "key": {"type": "string"},
        "value": {
            "type": "object",
            "properties": {
                "last_ts_ms": {"type": ["integer", "null"]},
                "tiles": {"type": "integer"},
                "count": {"type": "integer"},
            },
        },
        "windows": {"type": "array", "items": window},
        "watermark_ms": {"type": ["integer", "null"]},
        "partition": {"type": "integer"},
        "served_by": {"type": "string"},
        "stale": {
            "type": "boolean",
            "description": "true when the value may be out of date: read from a standby replica that lags by more than --standby-max-lag-ms, or whose partition's owner does not answer",
        },
        **replica_fields,
    },
}
features = {
    "type": "object",
    "required": [
        "key",
        "as_of_ms",
        "features",
        "ages_ms",
        "feature_set",
        "partition",
        "served_by",
        "stale",
        "lag_ms",
        "standby",
    ],
    "properties": {
        "key": {"type": "string"},
        "as_of_ms": {
            "type": ["integer", "null"],
            "description": "newest event time of the partition: features are computed as of then",
        },
        "features": {"type": "object", "additionalProperties": num_or_null},
        "ages_ms": {
            "type": "object",
            "additionalProperties": {"type": ["integer", "null"], "minimum": 0},
            "description": "age of each feature's freshest input; null where the value is null",
        },
        "feature_set": {"type": "string"},
        "partition": {"type": "integer"},
        "served_by": {"type": "string"},
        "stale": {"type": "boolean"},
        **replica_fields,
    },
}
feature_result = {
    "type": "object",
    "required": ["key", "status"],
    "description": "One key's answer: status 200 with its features, 404 for an unknown key, "
    "503 while nobody owns its partition or the owner does not answer.",
    "properties": {
        "key": {"type": "string"},
        "status": {"type": "integer", "enum": [200, 404, 503]},
        "as_of_ms": {"type": ["integer", "null"]},
        "features": {"type": "object", "additionalProperties": num_or_null},
        "ages_ms": {
            "type": "object",
            "additionalProperties": {"type": ["integer", "null"], "minimum": 0},
        },
        "partition": {"type": "integer"},
        "served_by": {"type": "string"},
        "stale": {"type": "boolean"},
        **replica_fields,
        "error": {"type": "string"},
    },
}
features_many = {
    "type": "object",
    "required": ["feature_set", "features", "results"],
    "properties": {
        "feature_set": {"type": "string"},
        "features": {"type": "array", "items": {"type": "string"}},
        "results": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/FeatureResult"},
            "description": "one per requested key, in request order",
        },
    },
}
models = {
    "type": "object",
    "required": ["topology", "feature_set", "features", "models"],
    "properties": {
        "topology": {"type": "string"},
        "feature_set": {"type": "string"},
        "features": {"type": "array", "items": {"type": "string"}},
        "models": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "active"],
                "properties": {
                    "name": {"type": "string"},
                    "active": {"type": ["string", "null"]},
                    "last_error": {"type": ["string", "null"]},
                    "thresholds": {"type": ["object", "null"], "additionalProperties": True},
                    "breaker": {"enum": ["closed", "half_open", "open", None]},
                    "rollout": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/RolloutState"}]},
                },
            },
        },
    },
}
rollout_state = {
    "type": "object",
    "description": "a model slot's rollout state on the control topic, as applied",
    "required": ["slot", "serving", "seq", "stage", "candidate", "percent", "last_good", "reason", "alarm"],
    "properties": {
        "slot": {"type": "string"},
        "serving": {"type": "string"},
        "seq": {"type": "integer"},
        "stage": {"enum": ["shadow", "canary", "ramp", "released", "rolled_back"]},
        "candidate": {"type": ["string", "null"]},
        "percent": {"type": "number"},
        "shadow_sample": {"type": "number"},
        "plan": {
            "type": ["object", "null"],
            "properties": {
                "steps": {"type": "array", "items": {"type": "number"}},
                "dwell_s": {"type": "number"},
                "min_events": {"type": "integer"},
            },
        },
        "step": {"type": "integer"},
        "step_started_ms": {"type": "integer"},
        "last_good": {"type": ["string", "null"]},
        "reason": {"type": "string"},
        "by": {"type": "string"},
        "at_ms": {"type": "integer"},
        "automatic": {"type": "boolean"},
        "alarm": {"type": "boolean"},
        "candidate_loaded": {"type": "boolean"},
        "candidate_error": {"type": ["string", "null"]},
    },
}
rollout_request = {
    "type": "object",
    "required": ["action"],
    "additionalProperties": False,
    "properties": {
        "action": {"enum": ["shadow", "canary", "ramp", "promote", "rollback"]},
        "target": {"type": "string", "description": "SLOT=VERSION (e.g. primary=2); promote and rollback: SLOT"},
        "percent": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100},
        "sample": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "steps": {"type": "string", "description": "ramp percents, e.g. 1,5,25,50,100"},
        "dwell_s": {"type": "number", "minimum": 0},
        "min_events": {"type": "integer", "minimum": 0},
        "reason": {"type": "string", "maxLength": 500},
    },
}
ready = {
    "type": "object",
    "required": ["ready", "reason", "partitions"],
    "properties": {
        "ready": {"type": "boolean"},
        "reason": {"type": "string"},
        "partitions": {"type": "array", "items": {"type": "integer"}},
        "standbys": {
            "type": "object",
            "description": "the standby replicas kept here, by partition, with their lag",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "lag_records": {"type": "integer", "minimum": 0},
                    "lag_ms": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
}




def resp(desc: str, schema: dict) -> dict:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def ref(n: str) -> dict:
    return {"$ref": f"#/components/schemas/{n}"}


def _example(topo: Topology) -> dict[str, Any] | None:
    """An event of the topology's reference workload (deterministic), if it has one."""
    if topo.workload is None:
        return None
    events = topo.workload(1, 7).events
    return dict(events[0]) if events else None


def document(topo: Topology) -> dict:
    """The OpenAPI 3.1 document of a worker running `topo`."""
    event_name = f"{topo.name.capitalize()}Event"  # fraud: FraudEvent, as it always was
    example = _example(topo)
    key_example = str(example[topo.key_field]) if example else "key-1"
    event = dict(topo.schema.model_json_schema())
    event["description"] = (f"A {topo.name} event ({topo.schema.__name__}): the contract the "
                            f"stream validates")
    if example is not None:
        event["examples"] = [example]
    rows = [name for a in topo.agents for name in (*a.tables, *a.local_tables)]
    tables = ", ".join(t.name for t in topo.tables) + (
        f"; agents' tables (`value` is the row, `windows` empty): {', '.join(rows)}"
        if rows else "")

    def consistency_param() -> dict:
        return {"name": "consistency", "in": "query", "required": False,
                "schema": {"type": "string", "enum": ["any", "owner"], "default": "any"},
                "description": "any: a worker with a standby replica of the key's partition "
                               "answers from it (with stale and lag_ms); owner: always the "
                               "partition's owner (forwarded; 503 while it is gone)"}

    def key_param() -> dict:
        return {"name": "key", "in": "path", "required": True, "schema": KEY,
                "description": f"Entity key (the {topo.key_field} of a {topo.name} event)."}

    features_request = {
        "type": "object",
        "required": ["keys"],
        "properties": {
            "keys": {"type": "array", "items": KEY, "minItems": 1, "maxItems": 500},
            "features": {
                "type": "array",
                "items": {"type": "string", "enum": list(topo.features.names)},
                "description": "the features to return (default: all of the feature set)",
            },
        },
        "examples": [{"keys": [key_example], "features": list(topo.features.names[:2])}],
    }
    common = {"400": err, "401": err, "414": err, "429": err, "503": err}
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "Streamwise worker API",
            "version": "1.0.0",
            "description": "Each worker serves this API (default 127.0.0.1:6066). Requests for keys owned by another worker are forwarded to it once. /v1/* needs `Authorization: Bearer <token>` when the worker runs with --api-token. Errors are JSON with a request id.",
        },
        "servers": [{"url": "http://127.0.0.1:6066"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Decision": decision,
                "ScoredDecision": scored,
                event_name: event,
                "Error": error,
                "TableValue": table_value,
                "Features": features,
                "FeaturesRequest": features_request,
                "FeatureResult": feature_result,
                "FeaturesMany": features_many,
                "Models": models,
                "RolloutState": rollout_state,
                "RolloutRequest": rollout_request,
                "Ready": ready,
            },
            "responses": {"Error": resp("An error (JSON, with a request id)", ref("Error"))},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "The event loop answers (503: the worker gave up, its state cannot be written, and is exiting)",
                    "security": [],
                    "operationId": "healthz",
                    "responses": {
                        "200": resp(
                            "alive",
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"type": "string"}},
                            },
                        ),
                        "503": resp(
                            "failed, with the reason",
                            {
                                "type": "object",
                                "required": ["status", "reason"],
                                "properties": {"status": {"type": "string"}, "reason": {"type": "string"}},
                            },
                        ),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "State recovered, a usable model loaded, partitions assigned",
                    "security": [],
                    "operationId": "readyz",
                    "responses": {
                        "200": resp("ready", ref("Ready")),
                        "503": resp("not ready, with the reason", ref("Ready")),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text exposition",
                    "security": [],
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "operationId": "openapi",
                    "responses": {"200": resp("OpenAPI 3", {"type": "object"})},
                }
            },
            "/v1/tables/{table}/{key}": {
                "get": {
                    "summary": "A table's value for a key, with its windows",
                    "operationId": "getTable",
                    "parameters": [
                        {
                            "name": "table",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
                            "description": f"a table of the topology: {tables}",
                        },
                        key_param(),
                        consistency_param(),
                    ],
                    "responses": {"200": resp("the value", ref("TableValue")), "404": err, **common},
                }
            },
            "/v1/features/{key}": {
                "get": {
                    "summary": "The stored features of a key now, with each feature's age",
                    "operationId": "getFeatures",
                    "parameters": [
                        key_param(),
                        {
                            "name": "features",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "comma-separated feature names (default: all)",
                        },
                        consistency_param(),
                    ],
                    "responses": {
                        "200": resp("features (those needing an event are null)", ref("Features")),
                        "404": err,
                        **common,
                    },
                }
            },
            "/v1/features": {
                "post": {
                    "summary": "The stored features of many keys, each answered by its owner",
                    "operationId": "getFeaturesMany",
                    "parameters": [consistency_param()],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("FeaturesRequest")}},
                    },
                    "responses": {
                        "200": resp("one result per key, each with its own status",
                                    ref("FeaturesMany")),
                        "408": err,
                        "413": err,
                        "415": err,
                        **common,
                    },
                }
            },
            "/v1/decisions/{key}": {
                "get": {
                    "summary": "The last decision for the key",
                    "operationId": "getDecision",
                    "parameters": [key_param(), consistency_param()],
                    "responses": {"200": resp("the decision", ref("Decision")), "404": err, **common},
                }
            },
            "/v1/score": {
                "post": {
                    "summary": "A decision for one event within budget_ms; read-only on state unless update=true",
                    "operationId": "score",
                    "parameters": [
                        {
                            "name": "budget_ms",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 10,
                                "maximum": 10000,
                                "default": 50,
                            },
                        },
                        {
                            "name": "update",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean", "default": False},
                            "description": "also append the event to the input topic (needs the worker's --api-token)",
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref(event_name)}},
                    },
                    "responses": {
                        "200": resp("the decision", ref("ScoredDecision")),
                        "403": err,
                        "404": err,
                        "408": err,
                        "413": err,
                        "415": err,
                        "422": err,
                        **common,
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "Models, active versions, breakers",
                    "operationId": "getModels",
                    "responses": {"200": resp("models", ref("Models")), **common},
                }
            },
            "/v1/rollout": {
                "post": {
                    "summary": "Change a model slot's rollout (written to the control topic; every worker applies it); needs the worker's --api-token",
                    "operationId": "postRollout",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("RolloutRequest")}},
                    },
                    "responses": {
                        "200": resp("the new state", ref("RolloutState")),
                        "400": err,
                        "403": err,
                        "404": err,
                        "408": err,
                        "409": err,
                        "413": err,
                        "415": err,
                        "422": err,
                        **common,
                    },
                }
            },
        },
    }
    return doc


def render(topo: Topology) -> str:
    """`document` as the JSON text the worker serves (and engine/openapi.json holds)."""
    return json.dumps(document(topo), indent=1) + "\n"
