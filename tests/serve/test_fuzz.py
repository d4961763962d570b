"""Schema fuzzing (schemathesis) of the service against its own OpenAPI spec.

No generated request may produce a server error (5xx), and every answer must match the
documented status codes, content types and response schemas. ``positive_data_acceptance``
is excluded: the schema can only say "a binary file", and random bytes that are not an
image are correctly refused with 415/422.

Tests are generated per operation with ``APIOperation.as_strategy`` because schemathesis'
lazy ``from_fixture`` loader does not work with the installed pytest 9.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from fetalplanes.serve.app import create_app

OPERATIONS = [("GET", "/health"), ("GET", "/v1/model"), ("POST", "/v1/predict"), ("POST", "/v1/predict/batch")]
MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def api_schema(tiny_checkpoint: Path):
    # Small limits so the fuzzer also reaches the 413 paths cheaply.
    app = create_app(tiny_checkpoint, max_upload_mb=0.25, max_batch=4)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def fuzz(operation, max_examples: int = MAX_EXAMPLES, **strategy_kwargs) -> None:
    @settings(max_examples=max_examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(**strategy_kwargs))
    def run(case) -> None:
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    run()


def test_schema_lists_every_operation(api_schema) -> None:
    found = sorted(tuple(r.ok().label.split(" ", 1)) for r in api_schema.get_all_operations())
    assert found == sorted(OPERATIONS)


@pytest.mark.parametrize("method, path", OPERATIONS)
def test_valid_requests(api_schema, method: str, path: str) -> None:
    fuzz(api_schema[path][method], generation_mode=GenerationMode.POSITIVE)


@pytest.mark.parametrize("method, path", [op for op in OPERATIONS if op[0] == "POST"])
def test_invalid_requests(api_schema, method: str, path: str) -> None:
    # The GET operations take no parameters, so there is nothing to make invalid.
    fuzz(api_schema[path][method], generation_mode=GenerationMode.NEGATIVE)


def test_fuzzed_queries_with_a_real_image(api_schema, synth_data: Path) -> None:
    """Reach inference (and explanations) with every combination of query parameters."""
    image = sorted((synth_data / "Images").glob("*.png"))[0].read_bytes()
    fuzz(api_schema["/v1/predict"]["POST"], max_examples=15, body={"file": image})
