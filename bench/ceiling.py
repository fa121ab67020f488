"""The ceiling: a bare Flask app answering the benchmark's routes with static JSON
of the same bytes the real server sends, on the same waitress set-up.

    python bench/ceiling.py PORT RESPONSES_JSON THREADS [--stock-waitress]

--stock-waitress serves it on waitress as it comes (its own channel class),
to show the event-loop spin that pods' channel class removes.
"""

import json
import sys
from pathlib import Path

from flask import Flask, Response

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_app(responses: dict) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # as pods' (make_server reads it)
    pod, page10, page100 = (responses[k].encode() for k in ("pod", "page10", "page100"))

    @app.get("/agent/v0/pods/<pod_id>")
    def get_pod(pod_id):
        return Response(pod, mimetype="application/json")

    @app.get("/agent/v0/pods")
    def list_pods():
        from flask import request

        return Response(page100 if request.args.get("limit") == "100" else page10, mimetype="application/json")

    @app.post("/agent/v0/pods")
    def create_pod():
        return Response(pod, mimetype="application/json")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


def main() -> None:
    port, responses_path, threads = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    with open(responses_path) as f:
        app = build_app(json.load(f))
    if "--stock-waitress" in sys.argv:
        from waitress import serve

        serve(app, host="127.0.0.1", port=port, threads=threads, ident="pods")
        return
    from pods.serving import server, shutdown, workers

    [sock] = workers.listening_sockets("127.0.0.1", port, 1)
    waitress_server = server.make_server(app, sock, threads)
    shutdown.run_until_signalled(waitress_server, on_exit=lambda: None)


if __name__ == "__main__":
    main()
