"""A Python client generated from the OpenAPI document (openapi-python-client) builds, imports,
and copes with what the server may send: values added to an enum after it was generated."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from crm.contacts.v1 import contacts_pb2
from crm.gateway.v1 import gateway_pb2
from trellis_gateway.openapi import build_openapi
from trellis_gateway.routes import build_routes

_PACKAGE = "trellis_generated_client"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    services = [
        *contacts_pb2.DESCRIPTOR.services_by_name.values(),
        *gateway_pb2.DESCRIPTOR.services_by_name.values(),
    ]
    doc = build_openapi(build_routes(services), title="Trellis CRM API", version="v1")
    work = tmp_path_factory.mktemp("client")
    (work / "openapi.json").write_text(json.dumps(doc))
    (work / "config.yaml").write_text("post_hooks: []\n")  # no formatter runs on the output
    generated = subprocess.run(
        [
            str(Path(sys.executable).parent / "openapi-python-client"),
            "generate",
            "--path",
            "openapi.json",
            "--output-path",
            _PACKAGE,
            "--meta",
            "none",
            "--config",
            "config.yaml",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The generator reports what it had to skip as warnings, and still exits 0.
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert "Warning" not in generated.stdout + generated.stderr, generated.stdout
    sys.path.insert(0, str(work))
    try:
        yield importlib.import_module(_PACKAGE)
    finally:
        sys.path.remove(str(work))
        for name in [m for m in sys.modules if m.split(".")[0] == _PACKAGE]:
            del sys.modules[name]


def _contact(stage: str) -> dict[str, object]:
    return {
        "id": "c1",
        "first_name": "Ada",
        "last_name": "",
        "emails": [],
        "phones": [],
        "company_id": "",
        "owner_id": "",
        "tags": [],
        "lifecycle_stage": stage,
        "custom_fields": {},
        "version": "1",
        "etag": "e1",
        "create_time": "2024-05-01T12:00:00Z",
    }


def test_a_stage_added_after_generation_does_not_break_parsing(client: ModuleType) -> None:
    models = importlib.import_module(f"{_PACKAGE}.models")
    known = models.Contact.from_dict(_contact("LIFECYCLE_STAGE_LEAD"))
    assert known.lifecycle_stage == models.CrmContactsV1LifecycleStage.LIFECYCLE_STAGE_LEAD
    later = models.Contact.from_dict(_contact("LIFECYCLE_STAGE_CHAMPION"))
    assert later.lifecycle_stage == "LIFECYCLE_STAGE_CHAMPION"
    assert later.to_dict()["lifecycle_stage"] == "LIFECYCLE_STAGE_CHAMPION"


def test_what_a_client_writes_has_no_output_only_fields(client: ModuleType) -> None:
    models = importlib.import_module(f"{_PACKAGE}.models")
    draft = models.ContactInput(first_name="Ada")
    assert draft.to_dict() == {"first_name": "Ada"}  # unset fields are not sent
    assert not hasattr(draft, "etag")
    with pytest.raises(TypeError):
        models.CompanyInput()  # name is REQUIRED
    assert models.CompanyPatch().to_dict() == {}  # a PATCH sends only what changes


def test_every_operation_has_a_function(client: ModuleType) -> None:
    create = importlib.import_module(f"{_PACKAGE}.api.contacts_service.create_contact")
    update = importlib.import_module(f"{_PACKAGE}.api.contacts_service.update_contact")
    assert callable(create.sync_detailed)
    assert "update_mask" in update.sync_detailed.__annotations__
