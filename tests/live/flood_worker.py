"""An abusive client, run as its own process: it sends pushes as fast as it can for a while,
reconnecting whenever the server closes it, and prints what happened as one JSON line.

    python -m tests.live.flood_worker WS_URL TOKEN PROJECT_ID SECONDS
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fieldsync.model.writer import create_entity
from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.messages import EntityPush, Error, Hello, Push, Welcome
from tests.entities import location_values, new_id


def flood(url: str, token: str, project_id: str, seconds: float) -> dict[str, object]:
    _, change = create_entity("location", location_values())
    entities = (EntityPush("location", new_id(), (change,)),)
    # Each push has an id of its own, as the protocol asks of pushes in flight: what is
    # tested is the rate, not a broken client (a reused id is refused as invalid_message).
    frames = [encode(Push(push_id, project_id, entities)) for push_id in range(1, 4097)]
    closes: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    connections = sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with connect(url, compression=None, max_size=None, open_timeout=5) as ws:
                connections += 1
                ws.send(encode(Hello((1,), token, "flooder")))
                first = decode_server(ws.recv(timeout=5))
                if not isinstance(first, Welcome):
                    assert isinstance(first, Error), first
                    refused[first.code] += 1
                    ws.recv(timeout=5)  # the close
                    continue
                while time.monotonic() < deadline:
                    ws.send(frames[sent % len(frames)])
                    sent += 1
        except ConnectionClosed as closed:
            closes[str(closed.rcvd.code if closed.rcvd else None)] += 1
        except (OSError, TimeoutError) as exc:
            closes[type(exc).__name__] += 1
    return {
        "connections": connections,
        "sent": sent,
        "closes": dict(closes),
        "refused_hellos": dict(refused),
    }


if __name__ == "__main__":
    url, token, project_id, seconds = sys.argv[1:5]
    print(json.dumps(flood(url, token, project_id, float(seconds))))
