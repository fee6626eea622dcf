"""Schemathesis against `/openapi.json`, in-process, on PostgreSQL: every check, a fixed seed,
a bounded number of examples per operation, and its stateful phase (following the links from
`ask`'s answer). The spec and the server must agree everywhere: zero failures.

The `/v1` routes are left out while their own work is in progress; they join by deleting
`NOT_YET_UNDER_TEST`.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from flask import Flask
from schemathesis.engine import Status, events, from_schema

SEED = 20260601
EXAMPLES_PER_OPERATION = 10
STATEFUL_STEPS = 10
NOT_YET_UNDER_TEST = "^/v1/"

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def test_schemathesis_finds_no_failure(app: Flask) -> None:
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "checks": {"enabled": True},
        "generation": {"max-examples": EXAMPLES_PER_OPERATION},
        "phases": {"stateful": {"max-steps": STATEFUL_STEPS}},
    })
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=config).exclude(
        path_regex=NOT_YET_UNDER_TEST
    )
    failures: list[str] = []
    checks: Counter[str] = Counter()
    phases: dict[str, Status] = {}
    links_followed = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for case_id, nodes in event.recorder.checks.items():
                for node in nodes:
                    checks[f"{event.phase.value} {node.name}"] += 1
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        case = event.recorder.cases[case_id].value
                        failure = node.failure_info.failure
                        failures.append(f"{event.recorder.label} {node.name}: {failure.title}\n"
                                        f"  {case.method} {case.path} body={case.body!r}\n  {failure.message[:800]}")
        elif isinstance(event, events.PhaseStarted) and isinstance(event.payload, events.StatefulPhasePayload):
            links_followed = event.payload.transitions_selected
        elif isinstance(event, events.PhaseFinished):
            phases[event.phase.name.value] = event.status
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures.append(f"error: {getattr(event, 'value', None) or getattr(event, 'exception', None)}")
    assert not failures, "\n\n".join(failures)
    for phase in ("coverage", "fuzzing", "stateful"):
        assert phases.get(phase) == Status.SUCCESS, phases
    assert links_followed >= 5, "the stateful phase follows the links from ask's answer"
    for check in ("not_a_server_error", "response_schema_conformance", "positive_data_acceptance",
                  "negative_data_rejection", "use_after_free", "ensure_resource_availability"):
        assert checks[f"stateful {check}"] and checks[f"fuzzing {check}"], check
