"""The OpenAPI 3.1 document of `evc web`'s JSON API (served at /api/openapi.json)."""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "an error", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}, "default": _ERROR}


_OP: list[dict[str, list[str]]] = [{"cookie": []}, {"token": []}]


def _q(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": {"type": "string"},
            "description": description}


def _command(summary: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary, "security": _OP,
        "parameters": [{"name": "cp_id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": _ok("Answer", "central's answer"),
    }
    if body is not None:
        op["requestBody"] = {"content": {"application/json": {"schema": body}}}
    return {"post": op}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "evc web", "version": "1",
             "description": "The EV charging network as evc's web board sees it, from Kafka. "
                            "GET works without login and hides driver ids; an operator "
                            "(session cookie, or Authorization: Bearer <token>) sees them "
                            "and may POST."},
    "paths": {
        "/api/board": {"get": {"summary": "the whole board (what the page shows)",
                               "responses": _ok("Board", "the board")}},
        "/api/events": {"get": {"summary": "Server-Sent Events: `board` events, each a Board",
                                "responses": {"200": {"description": "an event stream",
                                                      "content": {"text/event-stream": {}}}}}},
        "/api/cps": {"get": {"summary": "every charge point",
                             "parameters": [{"name": "free", "in": "query",
                                             "schema": {"type": "boolean"},
                                             "description": "only those free to charge"}],
                             "responses": _ok("CPList", "the charge points")}},
        "/api/cps/{cp_id}": {"get": {
            "summary": "one charge point (for an operator: its sessions and the running "
                       "supply's kWh curve)",
            "parameters": [{"name": "cp_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": _ok("CP", "the charge point")}},
        "/api/central": {"get": {"summary": "central's liveness",
                                 "responses": _ok("Central", "central")}},
        "/api/me": {"get": {"summary": "who is logged in, and the session's CSRF token",
                            "responses": {"200": {"description": "operator and csrf (null "
                                                                 "when not logged in)"}}}},
        "/api/login": {"post": {
            "summary": "log in as an operator (a session cookie: HttpOnly, SameSite=Strict)",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["name", "password"],
                "properties": {"name": {"type": "string"}, "password": {"type": "string"}}}}}},
            "responses": {"200": {"description": "logged in"}, "401": _ERROR, "429": _ERROR}}},
        "/api/logout": {"post": {"summary": "end the session", "security": _OP,
                                 "responses": {"200": {"description": "logged out"}}}},
        "/api/sessions": {"get": {
            "summary": "sessions, newest first", "security": _OP,
            "parameters": [_q("status", "open or closed"),
                           _q("since", "epoch seconds, or YYYY-MM-DD[THH:MM:SS]"),
                           _q("cp", "one CP"), _q("driver", "one driver"),
                           _q("limit", "at most this many (1000)")],
            "responses": _ok("Sessions", "the sessions")}},
        "/api/tickets.csv": {"get": {
            "summary": "closed sessions as CSV: session_id, cp_id, driver_id, started_at, "
                       "ended_at, consumo_kwh, price_eur_kwh, importe_eur, reason, ticket_id",
            "security": _OP,
            "parameters": [_q("since", "as for /api/sessions"), _q("cp", "one CP"),
                           _q("driver", "one driver")],
            "responses": {"200": {"description": "CSV", "content": {"text/csv": {}}},
                          "default": _ERROR}}},
        "/api/audit": {"get": {
            "summary": "central's last audited events (its audit log's last 500), newest first",
            "security": _OP, "parameters": [_q("limit", "at most this many (200)"),
                                            _q("event", "only this kind")],
            "responses": {"200": {"description": "count and events"}, "default": _ERROR}}},
        "/api/cps/{cp_id}/stop": _command("PARAR: out of order"),
        "/api/cps/{cp_id}/resume": _command("REANUDAR"),
        "/api/cps/{cp_id}/price": _command("a new price (from the next supply)", {
            "type": "object", "required": ["price"], "properties": {"price": {
                "type": "number", "description": "€/kWh"}}}),
        "/api/command": {"post": {
            "summary": "any console command that central takes from elsewhere",
            "security": _OP, "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["command"],
                "properties": {"command": {"type": "string", "maxLength": 200}}}}}},
            "responses": _ok("Answer", "central's answer")}},
    },
    "components": {"securitySchemes": {
        "cookie": {"type": "apiKey", "in": "cookie", "name": "evc_session",
                   "description": "from POST /api/login; a POST also needs X-CSRF-Token"},
        "token": {"type": "http", "scheme": "bearer",
                  "description": "<operator>.<key>, printed by add-operator at central"}},
        "schemas": {
        "Answer": {"type": "object", "properties": {
            "ok": {"type": "boolean"}, "command": {"type": "string"},
            "text": {"type": "string", "description": "central's words"}}},
        "Session": {"type": "object", "properties": {
            "session_id": {"type": "string"}, "cp_id": {"type": "string"},
            "driver_id": {"type": "string"}, "status": {"enum": ["open", "closed"]},
            "started_at": {"type": ["number", "null"]},
            "ended_at": {"type": ["number", "null"]}, "consumo_kwh": {"type": "number"},
            "importe_eur": {"type": "number"}, "price_eur_kwh": {"type": "number"},
            "reason": {"type": ["string", "null"]}, "ticket_id": {"type": ["string", "null"]}}},
        "Sessions": {"type": "object", "properties": {
            "count": {"type": "integer"},
            "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}}},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "properties": {"status": {"type": "integer"},
                                             "message": {"type": "string"}}}}},
        "Central": {"type": "object", "properties": {
            "available": {"type": "boolean"}, "central": {"type": ["string", "null"]},
            "started_at": {"type": ["number", "null"]}, "epoch": {"type": ["integer", "null"]},
            "last_heartbeat": {"type": ["number", "null"]}}},
        "Supply": {"type": "object", "properties": {
            "consumo_kwh": {"type": "number"}, "importe_eur": {"type": "number"},
            "started_at": {"type": ["number", "null"]},
            "driver_id": {"type": "string", "description": "operators only"},
            "session_id": {"type": "string", "description": "operators only"}}},
        "CP": {"type": "object", "properties": {
            "cp_id": {"type": "string"}, "location": {"type": "string"},
            "price_eur_kwh": {"type": "number"},
            "state": {"enum": ["Activado", "Parado", "Suministrando", "Averiado",
                               "Desconectado"]},
            "label": {"type": "string"}, "detail": {"type": "string"},
            "proven": {"type": "boolean"},
            "trust": {"enum": ["signed", "open", ""],
                      "description": "signed: proven (orders and readings signed); open: "
                                     "served unproven"},
            "site": {"type": ["string", "null"]},
            "via": {"enum": ["ocpp", None], "description": "ocpp: an OCPP charger behind "
                    "`evc ocpp`"},
            "charger": {"type": ["string", "null"],
                        "description": "an OCPP charger's own status (Charging, …)"},
            "kw": {"type": "number"}, "free": {"type": "boolean"},
            "supply": {"oneOf": [{"$ref": "#/components/schemas/Supply"}, {"type": "null"}]}}},
        "CPList": {"type": "object", "properties": {"cps": {
            "type": "array", "items": {"$ref": "#/components/schemas/CP"}}}},
        "Board": {"type": "object", "properties": {
            "central": {"$ref": "#/components/schemas/Central"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "cps": {"type": "array", "items": {"$ref": "#/components/schemas/CP"}},
            "sites": {"type": "array", "items": {"type": "object"}},
            "operator": {"type": "boolean"}, "at": {"type": "number"}}},
    }},
}
