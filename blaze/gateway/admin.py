"""Admin routes: API keys and dead letters (the ``admin`` scope)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from blaze.gateway.auth import Principal
from blaze.gateway.core import Gateway
from blaze.gateway.errors import not_found
from pipelines.stores import connect


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    scopes: Annotated[list[str], Field(min_length=1, max_length=3)]
    tenant: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")] = None
    requests_per_s: Annotated[float | None, Field(gt=0, le=1e6)] = None
    jobs_per_min: Annotated[int | None, Field(ge=1, le=10**9)] = None
    max_open_jobs: Annotated[int | None, Field(ge=1, le=10**9)] = None
    expires_in_s: Annotated[float | None, Field(gt=0, le=10 * 365 * 86400)] = None


def router(gw: Gateway) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["admin"])
    admin: Principal = Depends(gw.require("admin"))

    @api.get("/keys")
    def list_keys(who: Principal = admin) -> dict[str, Any]:
        return {"object": "list", "data": [k.public() for k in gw.keys.records()]}

    @api.post("/keys", status_code=201)
    def create_key(body: CreateKey, request: Request, who: Principal = admin) -> dict[str, Any]:
        """A new key; the answer is the only place its secret ever appears."""
        record, key = gw.keys.create(
            body.name,
            body.scopes,
            tenant=body.tenant,
            expires_s=body.expires_in_s,
            requests_per_s=body.requests_per_s,
            jobs_per_min=body.jobs_per_min,
            max_open_jobs=body.max_open_jobs,
        )
        request.state.audit_ids = [record.key_id]
        return {**record.public(), "key": key}

    @api.delete("/keys/{ref}")
    def revoke_key(ref: str, request: Request, who: Principal = admin) -> dict[str, Any]:
        revoked = gw.keys.revoke(ref)
        if not revoked:
            raise not_found("key", ref)
        request.state.audit_ids = revoked
        return {"revoked": revoked}

    @api.get("/dead-letters")
    def dead_letters(
        who: Principal = admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> dict[str, Any]:
        """The newest dead letters: jobs Blaze could not run, and why."""
        store = connect.dead_letters(gw.settings)
        try:
            letters = store.read(idle_s=1.0, limit=limit)
        finally:
            store.close()
        data = [{"ref": lt.ref, **lt.body} for lt in letters]
        return {"object": "list", "data": data}

    return api
