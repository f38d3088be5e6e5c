"""``paradec serve --replicas N``: the same server, deployed on Ray Serve.

- ``config``   the cluster options (a frozen dataclass), their checks, the per-replica memory estimate
- ``replica``  the model deployment: one Engine and one Scheduler per replica, streaming job events
- ``hub``      a small deployment the replicas report their metrics and load to
- ``routing``  the request router: session affinity, else the least loaded replica
- ``remote``   the Backend the routes use: jobs sent to replicas (affinity, one retry, failures counted)
- ``router``   the ingress deployment: the routes of ``server.app`` over that backend
- ``launch``   start or join Ray, deploy, serve until interrupted, tear down

Importing this package imports Ray; the single-process server never does.
"""
