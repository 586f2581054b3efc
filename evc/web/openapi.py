"""The OpenAPI 3.1 document of `evc web`'s JSON API (served at /api/openapi.json)."""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "an error", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{schema}"}}}}, "default": _ERROR}


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
    },
    "components": {"schemas": {
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
