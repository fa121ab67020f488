"""kill -9 at a random moment loses nothing that was acknowledged."""

import random
import threading
import time

import httpx
from dbtools import query
from live import Server

from pods.storage import is_url

URL = "/agent/v0/pods"
KEY = "crash-test-key-with-at-least-32-characters"
CYCLES = 4


class Ledger:
    """What the clients were told: acknowledged creates and deletes, and the
    requests whose answer never came (their outcome is unknown, either is fine)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.created = {}  # pod_id -> pod as answered
        self.deleted = set()  # acknowledged deletes
        self.unanswered_creates = []  # client_ids
        self.unanswered_deletes = set()  # pod_ids


def client_loop(url, ledger, stop, seed):
    rng = random.Random(seed)
    mine = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10) as c:
        n = 0
        while not stop.is_set():
            n += 1
            if mine and rng.random() < 0.3:
                pod_id = mine.pop(rng.randrange(len(mine)))
                try:
                    r = c.delete(f"{URL}/{pod_id}")
                except httpx.TransportError:
                    with ledger.lock:
                        ledger.unanswered_deletes.add(pod_id)
                    return
                assert r.status_code == 200, r.text
                with ledger.lock:
                    ledger.deleted.add(pod_id)
            else:
                client_id = f"s{seed}-{n}"
                try:
                    r = c.post(URL, json={"name": f"pod {client_id}", "client_id": client_id})
                except httpx.TransportError:
                    with ledger.lock:
                        ledger.unanswered_creates.append(client_id)
                    return
                assert r.status_code == 200, r.text
                with ledger.lock:
                    ledger.created[r.json()["pod_id"]] = r.json()
                mine.append(r.json()["pod_id"])


def stored(database):
    if not is_url(database):  # PostgreSQL checks its own pages
        assert query(database, "PRAGMA integrity_check") == [("ok",)]
    rows = query(database, "SELECT pod_id, name, client_id, created_at FROM pod")
    return {r[0]: {"pod_id": r[0], "name": r[1], "client_id": r[2], "created_at": r[3], "updated_at": r[3]} for r in rows}


def test_kill_9_at_random_moments_loses_nothing_acknowledged(database, tmp_path):
    path = database
    ledger = Ledger()
    rng = random.Random(20261129)
    for cycle in range(CYCLES):
        server = Server(path, env={"PODS_API_KEY": KEY}, workdir=tmp_path)
        stop = threading.Event()
        clients = [
            threading.Thread(target=client_loop, args=(server.url, ledger, stop, cycle * 100 + i))
            for i in range(6)
        ]
        for t in clients:
            t.start()
        time.sleep(rng.uniform(0.3, 0.9))
        server.kill()  # SIGKILL: no shutdown code runs
        stop.set()
        for t in clients:
            t.join()

        # The file opens cleanly and holds exactly what was acknowledged.
        pods = stored(path)
        for pod_id, pod in ledger.created.items():
            if pod_id in ledger.deleted:
                assert pod_id not in pods, f"cycle {cycle}: acknowledged delete of {pod_id} was lost"
            elif pod_id not in ledger.unanswered_deletes:
                assert pods.get(pod_id) == pod, f"cycle {cycle}: acknowledged create of {pod_id} was lost"
    assert len(ledger.created) > 50 and ledger.deleted, "the clients did too little to prove anything"

    # A create whose answer was lost can be retried safely: its client_id finds
    # the pod if it was stored, or makes exactly one if it was not.
    server = Server(path, env={"PODS_API_KEY": KEY}, workdir=tmp_path)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
            for client_id in ledger.unanswered_creates:
                first = c.post(URL, json={"client_id": client_id})
                again = c.post(URL, json={"client_id": client_id})
                assert first.status_code == again.status_code == 200
                assert first.json() == again.json()
    finally:
        assert server.stop() == 0
    pods = stored(path)
    client_ids = [p["client_id"] for p in pods.values()]
    assert len(client_ids) == len(set(client_ids))
