"""GET /v1/instances: the Workfront instances this broker serves (never a credential)."""

from __future__ import annotations

from fastapi import APIRouter

from service.web.deps import ConnectionsReader, RuntimeDep
from service.web.problems import auth_errors
from service.web.schemas import InstanceOut

router = APIRouter(prefix="/v1/instances", tags=["connections"])


@router.get(
    "",
    summary="List the Workfront instances",
    description="In the order they are configured, those the key reaches; `domain`/`lane`"
    " are what a callback must carry (null: the check is off for that instance).",
    response_model=list[InstanceOut],
    responses=auth_errors(lacks="the connections:read scope"),
)
async def list_instances(runtime: RuntimeDep, caller: ConnectionsReader) -> list[InstanceOut]:
    answer = []
    for instance in runtime.settings.instances.values():
        if not caller.reaches_instance(instance.name):
            continue  # a key limited to some instances sees only those
        expected = instance.expected_domain_lane()
        answer.append(
            InstanceOut(
                name=instance.name,
                workfront_url=instance.workfront_url,
                domain=expected[0] if expected else None,
                lane=expected[1] if expected else None,
            )
        )
    return answer
