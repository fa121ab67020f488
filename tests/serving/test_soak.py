"""A bounded soak: mixed traffic from many keep-alive clients, zero errors, no write
lost. How much traffic a server takes is measured by bench/soak.py, not here."""

import random
import threading
import time
from collections import Counter

import httpx
import pytest
from helpers import AUTH, KEY, URL

pytestmark = pytest.mark.live

CLIENTS = 16
SECONDS = 4


def mixed_traffic(url: str, clients: int, seconds: float, headers=AUTH):
    """``clients`` keep-alive clients for ``seconds``: creates (by name or client_id),
    gets, lists, deletes and bad requests. Returns (statuses, problems, live): a
    Counter of the statuses, what was not as expected, and the pods each client
    made and did not delete."""
    statuses, problems, live = Counter(), [], []
    deadline = time.monotonic() + seconds

    def client(n):
        rng = random.Random(n)
        mine = []  # this client's live pods: it alone deletes them
        live.append(mine)
        with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
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

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses, problems, live


def stored_pod_ids(url: str) -> set[str]:
    ids, token = set(), None
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
        while True:
            page = c.get(URL, params={"limit": 100, **({"page_token": token} if token else {})}).json()
            ids |= {p["pod_id"] for p in page["pods"]}
            if not (token := page.get("next_page_token")):
                return ids


def test_mixed_traffic_from_many_keep_alive_clients(database, tmp_path, servers):
    server = servers(database, env={"PODS_API_KEY": KEY}, workdir=tmp_path)
    statuses, problems, live = mixed_traffic(server.url, CLIENTS, SECONDS)
    # Every pod a client made and did not delete is there, and no other.
    assert stored_pod_ids(server.url) == {pod_id for mine in live for pod_id in mine}
    assert server.close() == 0
    assert problems == []
    assert sum(statuses.values()) > 0, statuses  # traffic there was; how much is bench/soak.py's business
    assert not any(status >= 500 for status in statuses)
    assert "Traceback" not in server.stderr
