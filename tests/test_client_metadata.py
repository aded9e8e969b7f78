"""Account metadata: fetched once, cached in Redis or the database, looked up."""

from __future__ import annotations

from typing import Any

import pytest

from flask_amocrm.amo import metadata_for
from flask_amocrm.amo.metadata import forget_metadata
from flask_amocrm.state import get_state


def _api_calls(sandbox: Any) -> int:
    return len([r for r in sandbox.requests() if r["path"].startswith("/api/v4")])


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "database"])
def test_fetched_once_then_cached(
    sandbox: Any, amo_app: Any, redis14: str, with_redis: bool
) -> None:
    app = amo_app(AMOCRM_REDIS_URL=redis14 if with_redis else None)
    with app.app_context():
        meta = metadata_for(get_state())
        fetched = _api_calls(sandbox)
        assert fetched >= 5
        assert metadata_for(get_state()) is meta  # this process's copy
        forget_metadata(get_state())  # another process: reads the shared cache
        again = metadata_for(get_state())
        assert again.data == meta.data
        assert _api_calls(sandbox) == fetched


def test_lookups_by_id_code_and_name(sandbox: Any, amo_app: Any) -> None:
    app = amo_app()
    with app.app_context():
        meta = metadata_for(get_state())
    sales = meta.pipeline("SALES")
    assert sales is not None and meta.pipeline(sales["id"]) is sales
    assert meta.main_pipeline() is sales and meta.pipeline(None) is sales
    new = meta.status(sales["id"], "new")
    assert new is not None and meta.status("Sales", str(new["id"])) == new
    assert meta.status("Partners", 142)["id"] == 142
    assert meta.status("Partners", "no such status") is None
    anna = meta.user("anna petrova")
    assert anna is not None and anna["is_active"]
    assert meta.user("gleb@example.com")["is_active"] is False
    phone = meta.field("contacts", "phone")
    assert phone is not None and phone["type"] == "multitext"
    assert meta.enum_id(phone, "mob") == meta.enum_id(phone, "MOB") is not None
    delivery = meta.field("lead", "delivery type")
    courier = meta.enum_id(delivery, "  COURIER ")
    assert courier is not None and meta.enum_id(delivery, courier) == courier
    assert meta.enum_id(delivery, "Teleport") is None
    assert meta.field("leads", "UTM_SOURCE")["type"] == "tracking_data"
    assert meta.field("companies", "nothing") is None
    assert meta.task_type("follow_up")["id"] == 1
    assert meta.task_type("встреча")["id"] == 2
    with pytest.raises(ValueError):
        meta.fields("customers")


def test_cli_sync_refreshes_the_cache(sandbox: Any, amo_app: Any, redis14: str) -> None:
    app = amo_app(AMOCRM_REDIS_URL=redis14)
    result = app.test_cli_runner().invoke(args=["amocrm", "sync"])
    assert result.exit_code == 0, result.output
    assert "2 pipelines, 5 users" in result.output
    fetched = _api_calls(sandbox)
    with app.app_context():
        forget_metadata(get_state())
        assert metadata_for(get_state()).user("Boris Ivanov") is not None
    assert _api_calls(sandbox) == fetched
