"""Server-Sent Events straight from the run streams (DESIGN §8).

::

    framing.py   pure: ``encode_sse(id, event, data) -> bytes``, an event's frame, the visibility filter
    cursor.py    pure: one client's position in a run (dedupe, gap detection, close after terminal)
    hub.py       one per event loop: ONE blocking XREAD per shard over every subscribed run, fanned
                 out to bounded per-client buffers
    views.py     the response: replay (XRANGE after Last-Event-ID), then tail through the hub; the
                 async body under ASGI, a sync one under WSGI (both drive the same cursor)
"""
