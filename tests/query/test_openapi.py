"""``/openapi.json`` is valid OpenAPI 3.1, generated, and describes every route the app
serves under ``/api``, with the parameters each endpoint takes."""

from __future__ import annotations

import json

from openapi_spec_validator import validate
from starlette.routing import Route

from fieldsync.live.query_http import openapi_json
from fieldsync.query.params import parameter_fields
from fieldsync.query.routes import ENDPOINTS, OPENAPI_PATH
from fieldsync.server import create_app
from fieldsync.store.memory import MemoryStorage
from tests.live_server import TEST_SECRET


def test_the_document_is_valid_openapi_3_1() -> None:
    document = json.loads(openapi_json())
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_served_api_route_is_described_and_nothing_else() -> None:
    app = create_app(storage=MemoryStorage(), secret=TEST_SECRET)
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        and (route.path.startswith("/api/") or route.path == OPENAPI_PATH)
        for method in (route.methods or ())
        if method not in ("HEAD", "OPTIONS")
    }
    document = json.loads(app.state.openapi_json)
    described = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == described
    assert len(served) == len(ENDPOINTS) + 1


def test_each_endpoint_lists_its_parameters_and_answers() -> None:
    document = json.loads(openapi_json())
    for endpoint in ENDPOINTS:
        operation = document["paths"][endpoint.path]["get"]
        names = [p["name"] for p in operation["parameters"]]
        assert names == ["project_id", *(f.encode_name for f in parameter_fields(endpoint.params))]
        assert set(operation["responses"]) == {"200", "400", "401", "404", "503"}
        page = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert page == {"$ref": f"#/components/schemas/{endpoint.response.__name__}"}
        schema = document["components"]["schemas"][endpoint.response.__name__]
        assert set(schema["required"]) == {"project_id", "seq", "items", "next_cursor"}
    activities = document["paths"][ENDPOINTS[0].path]["get"]["parameters"]
    by_name = {p["name"]: p for p in activities}
    assert by_name["location_id"]["explode"] is True
    assert by_name["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 500,
        "default": 100,
    }
    assert by_name["from"]["schema"] == {"type": "string", "format": "date-time"}
