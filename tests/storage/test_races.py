"""Concurrent clients against a real server: one pod per client_id, stable paging."""

import json
import threading

import httpx
import pytest
from dbtools import query
from live import Server

URL = "/agent/v0/pods"
KEY = "race-test-key-with-at-least-32-characters"


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def server(request, database, tmp_path):
    s = Server(database, "--workers", str(request.param), env={"PODS_API_KEY": KEY}, workdir=tmp_path)
    yield s
    assert s.stop() == 0


def test_many_creates_with_one_client_id_make_one_pod(server):
    threads, answers = 24, []
    barrier = threading.Barrier(threads)

    def create(n):
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
            c.get("/healthz")  # connect first, so the creates leave together
            barrier.wait()
            r = c.post(URL, json={"client_id": "the-one", "name": f"attempt {n}"})
            answers.append((r.status_code, r.json()))

    workers = [threading.Thread(target=create, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(answers) == threads
    assert {status for status, _ in answers} == {200}
    bodies = {json.dumps(body, sort_keys=True) for _, body in answers}
    assert len(bodies) == 1
    assert query(server.db, "SELECT count(*) FROM pod WHERE client_id = 'the-one'") == [(1,)]


@pytest.mark.parametrize("ascending", [False, True])
def test_paging_while_others_create_and_delete_sees_every_stable_pod_once(server, ascending):
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=30) as c:
        stable = [c.post(URL, json={"name": f"stable {i}"}).json() for i in range(120)]
    stop = threading.Event()
    churned = []
    progress = threading.Condition()

    def churn(n):
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as c:
            i = 0
            while not stop.is_set():
                pod = c.post(URL, json={"name": f"churn {n}-{i}"}).json()
                if i % 2:
                    assert c.delete(f"{URL}/{pod['pod_id']}").status_code == 200
                with progress:
                    churned.append(pod["pod_id"])
                    progress.notify_all()
                i += 1

    def wait_for_more_churn():
        """Between two pages, at least one more create (and maybe a delete) lands."""
        with progress:
            seen = len(churned)
            assert progress.wait_for(lambda: len(churned) > seen, timeout=10)

    churners = [threading.Thread(target=churn, args=(n,)) for n in range(3)]
    for t in churners:
        t.start()
    seen = []
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as c:
            params = {"limit": 7, "ascending": str(ascending).lower()}
            while True:
                page = c.get(URL, params=params).json()
                seen += page["pods"]
                if "next_page_token" not in page:
                    break
                params["page_token"] = page["next_page_token"]
                wait_for_more_churn()
    finally:
        stop.set()
        for t in churners:
            t.join()
    ids = [p["pod_id"] for p in seen]
    assert len(ids) == len(set(ids)), "a pod was listed twice"
    expected = stable if ascending else stable[::-1]
    assert [p for p in seen if p["name"].startswith("stable")] == expected
    order = [(p["created_at"], p["pod_id"]) for p in seen]
    assert order == sorted(order, reverse=not ascending)
