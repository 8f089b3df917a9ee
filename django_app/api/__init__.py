"""The REST API (DRF): base viewsets to subclass, authentication, permissions, one error handler.

::

    base.py            AgentViewSet: auth defaults, owner, JSON errors, MAX_REQUEST_BYTES
    runs.py            BaseAgentRunViewSet      runs/ (+ cancel/, events/, events/stream/)
    conversations.py   BaseAgentConversationViewSet   conversations/ (+ messages/)
    sessions.py        anonymous-session/
    stores.py          memory/, preferences/, tasks/, knowledge/ (+ search/): the caller's agent stores
    authentication.py  AnonymousSessionAuthentication, owner_of, RedactTokenFilter
    permissions.py     IsAuthenticatedOrAnonymousSession
    exceptions.py      the exception handler: store errors -> HTTP
    parsers.py         AgentJSONParser: deep, non-finite or non-UTF-8 JSON is a 400
    reads.py           read-models + read-your-writes from Redis
    backend.py         the process's one Redis client for sync views (a loop thread)
"""

from agentstream.django_app.api.authentication import AnonymousSessionAuthentication, RedactTokenFilter
from agentstream.django_app.api.conversations import BaseAgentConversationViewSet
from agentstream.django_app.api.permissions import IsAuthenticatedOrAnonymousSession
from agentstream.django_app.api.runs import BaseAgentRunViewSet

__all__ = [
    "AnonymousSessionAuthentication",
    "BaseAgentConversationViewSet",
    "BaseAgentRunViewSet",
    "IsAuthenticatedOrAnonymousSession",
    "RedactTokenFilter",
]
