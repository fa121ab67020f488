"""The waitress side of pods: connections, requests, tasks, shutdown and worker
processes, adapted where waitress has the same modules."""
