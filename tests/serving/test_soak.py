"""A bounded soak: mixed traffic from many keep-alive clients, zero errors."""

import random
import threading
import time
from collections import Counter

import httpx
from live import Server

URL = "/agent/v0/pods"
KEY = "soak-test-key-with-at-least-32-characters"
CLIENTS = 16
SECONDS = 4


def test_mixed_traffic_from_many_keep_alive_clients(database, tmp_path):
    server = Server(database, env={"PODS_API_KEY": KEY}, workdir=tmp_path)
    statuses, problems = Counter(), []
    deadline = time.monotonic() + SECONDS

    def client(n):
        rng = random.Random(n)
        mine = []  # this client's live pods: it alone deletes them
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
            while time.monotonic() < deadline:
                roll = rng.random()
                try:
                    if roll < 0.3 or not mine:
                        body = {"name": f"soak {n}"} if rng.random() < 0.5 else {"client_id": f"c{n}-{rng.randrange(20)}"}
                        r = c.post(URL, json=body)
                        expected = 200
                        if r.status_code == 200 and r.json()["pod_id"] not in mine:
                            mine.append(r.json()["pod_id"])
                    elif roll < 0.6:
                        r = c.get(f"{URL}/{rng.choice(mine)}")
                        expected = 200
                    elif roll < 0.8:
                        r = c.get(URL, params={"limit": rng.randint(1, 100), "ascending": rng.choice(["true", "false"])})
                        expected = 200
                    elif roll < 0.9:
                        pod_id = mine.pop(rng.randrange(len(mine)))
                        r = c.delete(f"{URL}/{pod_id}")
                        expected = 200
                    else:  # bad requests are part of real traffic too
                        r = c.get(URL, params={"limit": 0})
                        expected = 400
                except httpx.HTTPError as e:
                    problems.append(repr(e))
                    continue
                statuses[r.status_code] += 1
                if r.status_code != expected:
                    problems.append((r.request.method, str(r.request.url), r.status_code, r.text[:200]))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.stop() == 0
    assert problems == []
    assert sum(statuses.values()) > 1000, statuses
    assert not any(status >= 500 for status in statuses)
    assert "Traceback" not in server.stderr
