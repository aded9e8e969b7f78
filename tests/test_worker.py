"""The RQ side: jobs run in the app their queue belongs to."""

from __future__ import annotations

from typing import Any

from flask_amocrm.state import get_state
from flask_amocrm.worker import AmoWorker
from flask_amocrm.worker.queue import get_queue
from tests.helpers.e2e import stored_events


def _site(make_app: Any, redis_url: str, name: str) -> Any:
    rules = {"forms": {"callback": {"lead": {"name": f"{name}: {{{{ data.name }}}}"}}}}
    return make_app(
        AMOCRM_DELIVERY="rq",
        AMOCRM_REDIS_URL=redis_url,
        AMOCRM_QUEUE=name,
        AMOCRM_RULES=rules,
    )


def test_one_worker_serves_two_sites_each_job_in_its_own_app(
    make_app: Any, sandbox: Any, redis_conn: Any, redis_url: str
) -> None:
    shop, blog = _site(make_app, redis_url, "shop"), _site(make_app, redis_url, "blog")
    for app, name in ((shop, "Ann"), (blog, "Bob")):
        with app.app_context():  # outside a request: queued at once
            assert app.extensions["amocrm"].extension.submit("callback", {"name": name})
    # Both sites have an event 1, each in its own database, queued under its queue.
    assert [e.id for e in stored_events(shop)] == [e.id for e in stored_events(blog)]
    queues = []
    for app in (shop, blog):
        with app.app_context():
            queues.append(get_queue(get_state(), for_worker=True))
    worker = AmoWorker(queues, apps=[shop, blog], connection=queues[0].connection)
    worker.work(burst=True, with_scheduler=False)
    assert [e.status for e in stored_events(shop)] == ["delivered"]
    assert [e.status for e in stored_events(blog)] == ["delivered"]
    assert sorted(lead["name"] for lead in sandbox.leads()) == [
        "blog: Bob",
        "shop: Ann",
    ]
