"""The OpenAPI 3.1 document of the query API, generated from the route table
(``query.routes``) and the msgspec types of its parameters and answers: nothing in it is
written by hand, so it cannot drift from what the server does."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_type_hints

import msgspec

from fieldsync.query.items import BadParameter, ErrorBody
from fieldsync.query.params import is_repeatable, parameter_fields
from fieldsync.query.routes import ENDPOINTS, OPENAPI_PATH, Endpoint

REF = "#/components/schemas/{name}"

_ERRORS: dict[str, tuple[str, type[msgspec.Struct]]] = {
    "400": ("A parameter is unknown, repeated, malformed or out of range", BadParameter),
    "401": ("No bearer token, or one that is invalid or expired", ErrorBody),
    "404": ("No such project, or the caller is not a member (the same answer)", ErrorBody),
    "503": ("Storage cannot answer right now; retry after Retry-After seconds", ErrorBody),
}


def openapi_document(
    endpoints: Sequence[Endpoint] = ENDPOINTS, *, version: str = "1"
) -> dict[str, Any]:
    """The whole document, as a JSON-ready dict."""
    hints = [get_type_hints(e.params, include_extras=True) for e in endpoints]
    fields = [parameter_fields(e.params) for e in endpoints]
    parameter_types = [hints[i][f.name] for i, fs in enumerate(fields) for f in fs]
    answers = [e.response for e in endpoints]
    errors = [error for _, error in _ERRORS.values()]
    schemas, components = msgspec.json.schema_components(
        [*answers, *errors, *parameter_types], ref_template=REF
    )
    answer_schemas = schemas[: len(answers)]
    error_schemas = dict(
        zip(_ERRORS, schemas[len(answers) : len(answers) + len(errors)], strict=True)
    )
    parameter_schemas = iter(schemas[len(answers) + len(errors) :])
    paths: dict[str, Any] = {}
    for index, endpoint in enumerate(endpoints):
        parameters: list[dict[str, Any]] = [
            {
                "name": "project_id",
                "in": "path",
                "required": True,
                "description": "The project (a UUID).",
                "schema": {"type": "string", "format": "uuid"},
            }
        ]
        for field in fields[index]:
            schema = _present(next(parameter_schemas))
            if field.default is not msgspec.NODEFAULT and field.default is not None:
                schema["default"] = field.default
            description = schema.pop("description", None)
            parameter: dict[str, Any] = {
                "name": field.encode_name,
                "in": "query",
                "required": False,
                "schema": schema,
            }
            if description:
                parameter["description"] = description
            if is_repeatable(hints[index][field.name]):
                parameter.update(style="form", explode=True)
            parameters.append(parameter)
        paths[endpoint.path] = {
            "get": {
                "operationId": endpoint.operation_id,
                "summary": endpoint.summary,
                "description": _doc(endpoint.params),
                "tags": [endpoint.tag],
                "parameters": parameters,
                "responses": {
                    "200": _json("The page", answer_schemas[index]),
                    **{
                        status: _json(text, error_schemas[status], retry=status == "503")
                        for status, (text, _) in _ERRORS.items()
                    },
                },
            }
        }
    paths[OPENAPI_PATH] = {
        "get": {
            "operationId": "openapi_document",
            "summary": "This document",
            "security": [],
            "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fieldsync query API",
            "version": version,
            "description": (
                "Read models of a project's change log: activities, summonings, conflicts, "
                "members' sync health. Every answer names the log seq its rows reflect. "
                "See docs/api.md."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
    }


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema when it is given: an optional parameter is absent, never null."""
    options = schema.get("anyOf")
    if options is not None:
        present = [o for o in options if o != {"type": "null"}]
        if len(present) == 1:
            return dict(present[0])
    return dict(schema)


def _doc(params: type[msgspec.Struct]) -> str:
    return " ".join((params.__doc__ or "").split())


def _json(description: str, schema: dict[str, Any], *, retry: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if retry:
        answer["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        }
    return answer
