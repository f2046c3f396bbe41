"""Reads the crm.common.v1 options (scopes) off the descriptors of the generated code."""

from __future__ import annotations

from functools import cache

from google.protobuf import descriptor_pool

from crm.common.v1 import options_pb2


@cache
def required_scope_of(full_method: str) -> str:
    """The scope an RPC declares, from its gRPC path ("/pkg.Service/Method"); "" if none."""
    service, _, method = full_method.lstrip("/").partition("/")
    try:
        desc = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:
        return ""
    return str(desc.GetOptions().Extensions[options_pb2.required_scope])
