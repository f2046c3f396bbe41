"""A successful call's HTTP status comes from the method's kind (AIP-133 Create by its shape),
never from the RPC's name."""

from __future__ import annotations

import importlib

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, empty_pb2

from trellis_gateway.routes import Route, build_routes, success_status

_F = descriptor_pb2.FieldDescriptorProto
_HTTP = importlib.import_module("google.api.annotations_pb2").http


def _routes() -> dict[str, Route]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="crm/statustest/v1/widgets.proto",
        package="crm.statustest.v1",
        syntax="proto3",
        dependency=["google/api/annotations.proto", "google/protobuf/empty.proto"],
    )
    widget = fdp.message_type.add(name="Widget")
    widget.field.add(name="id", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    request = fdp.message_type.add(name="WidgetRequest")
    request.field.add(
        name="widget",
        number=1,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_OPTIONAL,
        type_name=".crm.statustest.v1.Widget",
    )
    request.field.add(name="parent", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    service = fdp.service.add(name="WidgetsService")
    for name, path, body, output in [
        ("AddWidget", "/v1/widgets", "widget", "Widget"),  # a Create by shape, not by name
        ("AddPart", "/v1/{parent=widgets/*}/parts", "widget", "Widget"),
        ("CreateWidgetReport", "/v1/widgets:report", "widget", "Widget"),  # a custom verb
        ("CreateFromAll", "/v1/widget-drafts", "*", "Widget"),  # not the resource as body
        ("CreateNothing", "/v1/nothings", "widget", ".google.protobuf.Empty"),
    ]:
        method = service.method.add(
            name=name,
            input_type=".crm.statustest.v1.WidgetRequest",
            output_type=output if output.startswith(".") else f".crm.statustest.v1.{output}",
        )
        rule = method.options.Extensions[_HTTP]
        rule.post = path
        rule.body = body
    assert empty_pb2.Empty.DESCRIPTOR
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName(fdp.name)
    except KeyError:
        file = pool.AddSerializedFile(fdp.SerializeToString())
    return {r.method.name: r for r in build_routes(file.services_by_name.values())}


ROUTES = _routes()


@pytest.mark.parametrize(
    ("rpc", "status"),
    [
        ("AddWidget", 201),
        ("AddPart", 201),
        ("CreateWidgetReport", 200),
        ("CreateFromAll", 200),
        ("CreateNothing", 204),
    ],
)
def test_answer_status_follows_the_method_kind(rpc: str, status: int) -> None:
    assert success_status(ROUTES[rpc]) == status
