"""Schemathesis against `/openapi.json`, in-process, on PostgreSQL: every check, a fixed seed,
a bounded number of examples per operation, and its stateful phase (following the links
between operations). The spec and the server must agree everywhere: zero failures.

The document is tested in two runs: the six routes with the rest, and `/v1`. One run over
both would never start a stateful chain at `ask`: Schemathesis begins chains only at
operations it believes need no earlier answer when the document has any, and it reads
`ask`'s `convo_id` as such a need, while `/v1` has several that need none.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
import schemathesis
from flask import Flask
from schemathesis.engine import Status, events, from_schema
from schemathesis.schemas import BaseSchema

SEED = 20260601
EXAMPLES_PER_OPERATION = 10
STATEFUL_STEPS = 10
STATEFUL_SCENARIOS = 20
V1 = "^/v1/"
CHECKS = (
    "not_a_server_error", "response_schema_conformance", "positive_data_acceptance",
    "negative_data_rejection", "use_after_free", "ensure_resource_availability",
)

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    checks: Counter[str] = field(default_factory=Counter)
    phases: dict[str, Status] = field(default_factory=dict)
    operations: set[str] = field(default_factory=set)
    """Every operation of the document Schemathesis tested."""
    answered: Counter[str] = field(default_factory=Counter)
    """`<phase> <status> <method> <path>` of every request made."""
    links: int = 0


def run(schema: BaseSchema) -> Outcome:
    """Every phase of Schemathesis over `schema`, and what came of it."""
    outcome = Outcome()
    for result in schema.get_all_operations():
        outcome.operations.add(result.ok().label)
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            phase = event.phase.value
            for case_id, interaction in event.recorder.interactions.items():
                case = event.recorder.cases[case_id].value
                status = interaction.response.status_code if interaction.response is not None else "none"
                outcome.answered[f"{phase} {status} {case.method} {case.path}"] += 1
            for case_id, nodes in event.recorder.checks.items():
                for node in nodes:
                    outcome.checks[f"{phase} {node.name}"] += 1
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        case = event.recorder.cases[case_id].value
                        failure = node.failure_info.failure
                        answered = event.recorder.interactions.get(case_id)
                        answer = answered.response.content[:300] if answered and answered.response else b""
                        outcome.failures.append(
                            f"{event.recorder.label} {node.name}: {failure.title}\n"
                            f"  {case.method} {case.path} {case.path_parameters} query={case.query} body={case.body!r}\n"
                            f"  {failure.message[:800]}\n  answered: {answer!r}"
                        )
        elif isinstance(event, events.PhaseStarted) and isinstance(event.payload, events.StatefulPhasePayload):
            outcome.links = event.payload.transitions_selected
        elif isinstance(event, events.PhaseFinished):
            outcome.phases[event.phase.name.value] = event.status
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            outcome.failures.append(f"error: {getattr(event, 'value', None) or getattr(event, 'exception', None)}")
    return outcome


def checked(app: Flask, *, v1: bool) -> Outcome:
    """Schemathesis over `/v1` alone, or over the rest of the document; every failure fails."""
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "checks": {"enabled": True},
        "generation": {"max-examples": EXAMPLES_PER_OPERATION},
        "phases": {"stateful": {
            "max-steps": STATEFUL_STEPS,
            "generation": {"max-examples": STATEFUL_SCENARIOS},
            "inference": {"algorithms": []},  # the document's own links, not guessed ones
        }},
    })
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)
    outcome = run(schema.include(path_regex=V1) if v1 else schema.exclude(path_regex=V1))
    assert not outcome.failures, "\n\n".join(outcome.failures)
    for phase in ("coverage", "fuzzing", "stateful"):
        assert outcome.phases.get(phase) == Status.SUCCESS, outcome.phases
    for check in CHECKS:
        assert outcome.checks[f"stateful {check}"] and outcome.checks[f"fuzzing {check}"], check
    fuzzed = {key.split(" ", 2)[2] for key in outcome.answered if key.startswith("fuzzing ")}
    assert outcome.operations <= fuzzed, outcome.operations - fuzzed
    return outcome


def test_the_six_routes_and_the_rest_agree_with_the_spec(app: Flask) -> None:
    outcome = checked(app, v1=False)
    assert outcome.links >= 5, "the stateful phase follows the links from ask's answer"
    assert outcome.answered["stateful 200 POST /api/chat/ask"], outcome.answered


def test_v1_agrees_with_the_spec(app: Flask) -> None:
    outcome = checked(app, v1=True)
    for family in ("/v1/responses", "/v1/conversations", "/v1/chat/completions", "/v1/models"):
        assert any(operation.split(" ", 1)[1].startswith(family) for operation in outcome.operations), family
    by_id = {key.split(" ", 2)[2] for key in outcome.answered if key.startswith("stateful 200") and "{" in key}
    assert len(by_id) >= 3, by_id  # chains that reach things by the ids of earlier answers
