"""Account-level webhook endpoints: ``POST/GET /webhooks`` and ``DELETE /webhooks/{id}``.

Every job of the calling key is delivered to each endpoint (its end, and each target language's),
beside the job's own ``callback_url``, signed with the key's secret (``polydub.api.webhooks``).
The URL is checked as a callback_url is (no private addresses unless allowed).
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from polydub.api.db import webhook_endpoints as endpoints_db
from polydub.api.deps import Caller, State
from polydub.api.webhooks import check_callback_url
from polydub.errors import NotFound
from polydub.schemas import ErrorEnvelope, WebhookEndpointIn, WebhookEndpointOut

router = APIRouter(tags=["webhooks"])

# Each endpoint is one more delivery per event: a bound on what one key fans out.
MAX_ENDPOINTS_PER_KEY = 10


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookEndpointOut,
    responses={c: {"model": ErrorEnvelope} for c in (401, 409, 422, 429)},
    summary="Register a webhook endpoint for every job of this key",
)
async def create_webhook(
    body: WebhookEndpointIn, state: State, key: Caller, response: Response
) -> WebhookEndpointOut:
    url = str(body.url)
    check_callback_url(url, state.settings)
    row = await endpoints_db.create_endpoint(
        state.pool, key.id, url, body.description, MAX_ENDPOINTS_PER_KEY
    )
    endpoint = WebhookEndpointOut.model_validate(dict(row))
    response.headers["Location"] = f"{state.settings.api_public_url.rstrip('/')}/api/v1/webhooks"
    return endpoint


@router.get(
    "/webhooks",
    response_model=list[WebhookEndpointOut],
    responses={c: {"model": ErrorEnvelope} for c in (401, 429)},
    summary="This key's webhook endpoints",
)
async def list_webhooks(state: State, key: Caller) -> list[WebhookEndpointOut]:
    rows = await endpoints_db.list_endpoints(state.pool, key.id)
    return [WebhookEndpointOut.model_validate(dict(r)) for r in rows]


@router.delete(
    "/webhooks/{endpoint_id}",
    status_code=204,
    responses={c: {"model": ErrorEnvelope} for c in (401, 404, 429)},
    summary="Remove a webhook endpoint",
)
async def delete_webhook(endpoint_id: uuid.UUID, state: State, key: Caller) -> Response:
    if not await endpoints_db.delete_endpoint(state.pool, key.id, endpoint_id):
        raise NotFound(f"webhook endpoint {endpoint_id} not found", code="webhook_not_found")
    return Response(status_code=204)
