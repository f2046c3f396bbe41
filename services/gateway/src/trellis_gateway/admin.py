"""The gateway's own services: tenants (platform operator only) and API keys."""

from __future__ import annotations

import uuid

import psycopg
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.rows import DictRow

from crm.gateway.v1 import gateway_pb2
from crmkit import paging, text
from crmkit.context import Identity
from crmkit.db import Pool
from crmkit.errors import Invalid, NotFound, invalid_field
from crmkit.ids import is_uuid
from trellis_gateway import apikeys
from trellis_gateway.dispatch import LocalHandler

_SERVICE_TENANTS = "/crm.gateway.v1.TenantsService/"
_SERVICE_KEYS = "/crm.gateway.v1.ApiKeysService/"


def _ts(value: object) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)  # type: ignore[arg-type]
    return ts


def _tenant(row: DictRow) -> gateway_pb2.Tenant:
    return gateway_pb2.Tenant(id=row["id"], name=row["name"], create_time=_ts(row["create_time"]))


def _key(row: DictRow) -> gateway_pb2.ApiKey:
    key = gateway_pb2.ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        scopes=row["scopes"],
        create_time=_ts(row["create_time"]),
    )
    if row["revoke_time"] is not None:
        key.revoke_time.CopyFrom(_ts(row["revoke_time"]))
    return key


def _name(value: str, path: str) -> str:
    out: list[tuple[str, str]] = []
    name = text.one_line(value, path, out)
    if out:
        raise Invalid(out)
    if not name:
        raise invalid_field(path, "required")
    return name


class Admin:
    def __init__(
        self, pool: Pool, verifier: apikeys.KeyVerifier, grantable: frozenset[str]
    ) -> None:
        self._pool = pool
        self._verifier = verifier
        self._grantable = grantable  # every scope the protos declare, plus "admin"

    def handlers(self) -> dict[str, LocalHandler]:
        def local(fn: object) -> LocalHandler:
            return fn  # type: ignore[return-value]

        return {
            _SERVICE_TENANTS + "CreateTenant": local(self.create_tenant),
            _SERVICE_TENANTS + "GetTenant": local(self.get_tenant),
            _SERVICE_KEYS + "CreateApiKey": local(self.create_api_key),
            _SERVICE_KEYS + "ListApiKeys": local(self.list_api_keys),
            _SERVICE_KEYS + "DeleteApiKey": local(self.delete_api_key),
        }

    async def create_tenant(self, req: gateway_pb2.CreateTenantRequest, _: Identity) -> Message:
        name = _name(req.tenant.name, "tenant.name")
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO tenants (id, name) VALUES (%s, %s) RETURNING id::text, name, create_time",
                (str(uuid.uuid4()), name),
            )
            row = await cur.fetchone()
        assert row is not None
        return _tenant(row)

    async def get_tenant(self, req: gateway_pb2.GetTenantRequest, _: Identity) -> Message:
        if not is_uuid(req.id):
            raise NotFound("tenant", req.id)
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id::text, name, create_time FROM tenants WHERE id = %s", (req.id,)
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound("tenant", req.id)
        return _tenant(row)

    async def create_api_key(self, req: gateway_pb2.CreateApiKeyRequest, who: Identity) -> Message:
        spec = req.api_key
        tenant_id = spec.tenant_id or who.tenant_id
        if tenant_id != who.tenant_id and "platform:admin" not in who.scopes:
            raise invalid_field("api_key.tenant_id", "a key can only be made for your own tenant")
        if tenant_id == apikeys.PLATFORM_TENANT or not is_uuid(tenant_id):
            raise invalid_field("api_key.tenant_id", "name the tenant the key is for")
        name = _name(spec.name, "api_key.name")
        if not spec.scopes:
            raise invalid_field("api_key.scopes", "grant at least one scope")
        for i, scope in enumerate(spec.scopes):
            if scope not in self._grantable:
                raise invalid_field(
                    f"api_key.scopes[{i}]",
                    f"unknown scope; one of {', '.join(sorted(self._grantable))}",
                )
        key_id, secret, secret_hash = apikeys.generate()
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "INSERT INTO api_keys (id, tenant_id, name, scopes, secret_hash)"
                    " VALUES (%s, %s, %s, %s, %s)"
                    " RETURNING id, tenant_id::text, name, scopes, create_time, revoke_time",
                    (key_id, tenant_id, name, sorted(set(spec.scopes)), secret_hash),
                )
                row = await cur.fetchone()
        except psycopg.errors.ForeignKeyViolation:
            raise invalid_field("api_key.tenant_id", "no such tenant") from None
        assert row is not None
        created = _key(row)
        created.secret = secret
        return created

    async def list_api_keys(self, req: gateway_pb2.ListApiKeysRequest, who: Identity) -> Message:
        size = paging.page_size(req.page_size)
        resume = paging.decode_page_token(req.page_token, {}, arity=1)
        after = str(resume[0]) if resume else None
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id, tenant_id::text, name, scopes, create_time, revoke_time FROM api_keys"
                " WHERE tenant_id = %s AND (%s::text IS NULL OR id > %s) ORDER BY id LIMIT %s",
                (who.tenant_id, after, after, size + 1),
            )
            rows = await cur.fetchall()
        resp = gateway_pb2.ListApiKeysResponse(api_keys=[_key(r) for r in rows[:size]])
        if len(rows) > size:
            resp.next_page_token = paging.encode_page_token([rows[size - 1]["id"]], {})
        return resp

    async def delete_api_key(self, req: gateway_pb2.DeleteApiKeyRequest, who: Identity) -> Message:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE api_keys SET revoke_time = coalesce(revoke_time, now())"
                " WHERE id = %s AND tenant_id = %s RETURNING id",
                (req.id, who.tenant_id),
            )
            found = await cur.fetchone()
        if found is None:
            raise NotFound("api key", req.id)
        self._verifier.forget(req.id)
        return empty_pb2.Empty()
