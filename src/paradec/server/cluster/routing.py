"""The request router of the model deployment (runs inside the router's handle).

A request names the replica that holds its conversation's drafter state (``replica_hint``, set
by the router from an earlier turn) and, on a retry, the replica that just failed it
(``avoid``). The hinted replica is tried first while it is alive and has room; otherwise, and
for requests without a hint, the least-loaded replicas (by Ray Serve's queue-length cache) come
first. Ray Serve probes each rank in turn and sends the request to the first replica that
accepts it.
"""

from __future__ import annotations

from typing import List, Optional

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica


class SessionRouter(RequestRouter):
    async def choose_replicas(
        self, candidate_replicas: List[RunningReplica], pending_request: Optional[PendingRequest] = None
    ) -> List[List[RunningReplica]]:
        kwargs = pending_request.kwargs if pending_request is not None else {}
        hint, avoid = kwargs.get("replica_hint"), kwargs.get("avoid")
        others = [r for r in candidate_replicas if r.replica_id.unique_id != avoid] or list(candidate_replicas)
        cache = self.replica_queue_len_cache
        others.sort(key=lambda r: cache.get(r.replica_id) or 0)
        if hint:
            held = [r for r in others if r.replica_id.unique_id == hint]
            if held and self.select_available_replicas(held):
                rest = [r for r in others if r is not held[0]]
                return [held, rest] if rest else [held]
        return [others[:2], others[2:]] if len(others) > 2 else [others]
