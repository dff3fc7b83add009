"""Bearer tokens for the API double: ServiceAccount identities as kube-apiserver sees them.

A token maps to a :class:`~tests.harness.kube_api.UserInfo`. ServiceAccount users are named
``system:serviceaccount:<namespace>:<name>`` and belong to ``system:serviceaccounts``,
``system:serviceaccounts:<namespace>`` and ``system:authenticated``. A token *bound to a pod*
(the projected token kubelet mounts, Kubernetes >= 1.30 with ServiceAccountTokenPodNodeInfo)
also carries the pod's node in ``userInfo.extra["authentication.kubernetes.io/node-name"]``,
which the chart's admission policy compares with the MigLayout's name.

Differs from a real server: tokens are opaque random strings here, not signed JWTs, and never
expire; the claims are what a TokenReview of a real bound token returns.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from tests.harness.kube_api import UserInfo

NODE_NAME_CLAIM = "authentication.kubernetes.io/node-name"
POD_NAME_CLAIM = "authentication.kubernetes.io/pod-name"
ADMIN = UserInfo("kubernetes-admin", ("system:masters", "system:authenticated"))


def service_account_user(
    namespace: str, name: str, *, node: str | None = None, pod: str | None = None
) -> UserInfo:
    """The user a ServiceAccount token authenticates as; ``node``/``pod`` for a pod-bound token."""
    extra: dict[str, tuple[str, ...]] = {}
    if node is not None:
        extra[NODE_NAME_CLAIM] = (node,)
    if pod is not None:
        extra[POD_NAME_CLAIM] = (pod,)
    return UserInfo(
        f"system:serviceaccount:{namespace}:{name}",
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
        extra,
    )


@dataclass
class TokenAuthenticator:
    """Issues tokens and resolves them; plug :meth:`authenticate` into ``KubeApiServer.authenticate``."""

    _users: dict[str, UserInfo] = field(default_factory=dict)

    def issue(self, user: UserInfo) -> str:
        token = secrets.token_urlsafe(24)
        self._users[token] = user
        return token

    def authenticate(self, token: str) -> UserInfo | None:
        return self._users.get(token)
