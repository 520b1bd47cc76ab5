"""`GET /openapi.json`: the OpenAPI 3.1 description of `onnx-serve`'s HTTP API."""

from __future__ import annotations

from typing import Any

_ROW = {
    "type": "object",
    "description": "One image: exactly an `onnx-predict --format json` line (path and error when unusable).",
    "properties": {
        "path": {"type": "string", "description": "The upload's file name (raw bodies: ?name=, else 'upload')."},
        "label": {"type": "string"},
        "score": {"type": "number"},
        "top_k": {"type": "array", "items": {"type": "object", "properties": {
            "label": {"type": "string"}, "score": {"type": "number"}}}},
        "accepted": {"type": "boolean",
                     "description": "False when the image looks like none of the labels (label is the best guess)."},
        "error": {"type": "string", "description": "The image policy's one line, when the image is unusable."},
    },
    "required": ["path"],
}
_ROWS = {
    "type": "object",
    "properties": {
        "rows": {"type": "array", "items": {"$ref": "#/components/schemas/Row"}},
        "model_sha256": {"type": "string"},
        "seconds": {"type": "number", "description": "Time from the request's arrival to its answer."},
        "error": {"type": "string", "description": "Set when no image could be classified."},
    },
}
_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def openapi(version: str) -> dict[str, Any]:
    secured = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "onnx-serve", "version": version,
                 "description": "Classify images with an exported alexnet-onnx model."},
        "paths": {
            "/v1/classify": {"post": {
                "summary": "Classify one image (raw body) or several (multipart/form-data files).",
                "security": secured,
                "parameters": [
                    {"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
                    {"name": "name", "in": "query", "schema": {"type": "string"},
                     "description": "The row's path for a raw body."},
                ],
                "requestBody": {"required": True, "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {"schema": {"type": "object", "additionalProperties": {
                        "type": "string", "format": "binary"}}},
                }},
                "responses": {
                    "200": _json("Rows", "One row per image; unusable images get error rows."),
                    "400": _json("Error", "No image in the request, or a bad parameter."),
                    "401": _json("Error", "Missing or wrong bearer token (with --token-file)."),
                    "408": _json("Error", "The body did not arrive in time."),
                    "413": _json("Error", "The body is larger than --max-body-mb."),
                    "415": _json("Rows", "No image is in a supported format."),
                    "422": _json("Rows", "No image could be decoded (corrupt, truncated, refused as a bomb)."),
                    "503": _json("Error", "The queue is full or the server is shutting down; see Retry-After."),
                },
            }},
            "/v1/model": {"get": {"summary": "The model's contract and provenance.", "security": secured,
                                  "responses": {"200": {"description": "Labels, preprocessing, variant, sha256.",
                                                        "content": {"application/json": {}}}}}},
            "/healthz": {"get": {"summary": "The process is alive.", "responses": {"200": _text("ok")}}},
            "/readyz": {"get": {"summary": "The model is loaded and the server takes requests.",
                                "responses": {"200": _text("ready"), "503": _text("not ready, or draining")}}},
            "/metrics": {"get": {"summary": "Prometheus text format.", "security": secured,
                                 "responses": {"200": _text("metrics")}}},
            "/": {"get": {"summary": "A web page to try the model.",
                          "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
        },
        "components": {
            "schemas": {"Row": _ROW, "Rows": _ROWS, "Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
