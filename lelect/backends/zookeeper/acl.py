"""With ``?auth=``, only holders of the credentials may contend: lelect's znodes carry
its ACL (all rights for its identity, read for everyone), but ZooKeeper applies a
client's default ACL only to the nodes that client creates. A node somebody else made
first (the base path, an election, ``_resign`` …) keeps whatever ACL it was given: an
anonymous client that pre-created an election with ``world:anyone:cdrwa`` could add
contenders ahead of lelect's and delete the leader's node.

So before a campaign lelect looks at the ACL of every node it relies on: a node that
grants any right beyond READ to an identity other than lelect's own is given lelect's
ACL when lelect may (it holds ADMIN there, as everybody does on a ``world:anyone:cdrwa``
node), and refused (status 78, one line naming the node and its ACL) when it may not.
An election whose ACL had to be fixed may already hold a contender from outside: that
is refused too, for an operator to look at, rather than deleted or obeyed.
"""

from __future__ import annotations

import logging

from kazoo.exceptions import BadVersionError, NoAuthError, NoNodeError
from kazoo.security import Permissions

from lelect.backends.zookeeper.layout import ElectionPaths
from lelect.backends.zookeeper.session import ZooKeeperSession
from lelect.errors import ConfigError

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("lelect.zookeeper")

_LETTERS = (("c", Permissions.CREATE), ("d", Permissions.DELETE), ("r", Permissions.READ),
            ("w", Permissions.WRITE), ("a", Permissions.ADMIN))


def guarded_nodes(paths: ElectionPaths) -> list[str]:
    """The nodes whose ACL decides who may contend, resign, or rewrite the records."""
    base = paths.base
    return [base, paths.contenders,
            *(f"{base}/{own}" for own in ("_members", "_resign", "_history", "_slots", "_notes",
                                                "_holders")),
            paths.members, paths.resign, paths.history, paths.slots, paths.notes, paths.holders]


def acl_text(acl: list[Any]) -> str:
    """An ACL as zkCli shows it: ``world:anyone:cdrwa,digest:ops:…:cdrwa``."""
    return ",".join(f"{entry.id.scheme}:{entry.id.id}:"
                    + "".join(letter for letter, bit in _LETTERS if entry.perms & bit)
                    for entry in acl)


def foreign_rights(acl: list[Any], ours: list[Any]) -> list[Any]:
    """The entries of ``acl`` that give an identity other than ours more than READ."""
    own_ids = {(entry.id.scheme, entry.id.id) for entry in ours
               if entry.perms & ~Permissions.READ}
    return [entry for entry in acl
            if entry.perms & ~Permissions.READ and (entry.id.scheme, entry.id.id) not in own_ids]


def guard_acls(session: ZooKeeperSession, paths: ElectionPaths, timeout: float) -> None:
    """Make every existing node of ``paths`` lelect's alone to change, or raise
    ConfigError naming the node and its ACL. Only when the URL gives credentials."""
    config = session.config
    if config.auth_scheme is None:
        return
    ours = config.acl()
    nodes = guarded_nodes(paths)
    # All questions at once: one round trip when every ACL is fine (the usual case).
    asked = [session.client.get_acls_async(path) for path in nodes]
    fixed_election = False
    for path, answer in zip(nodes, asked):
        with session.errors("checking ACLs", path):
            if _guard(session, path, ours, timeout, answer) and path == paths.contenders:
                fixed_election = True
    if fixed_election:
        _refuse_outside_contenders(session, paths, ours, timeout)


def _guard(session: ZooKeeperSession, path: str, ours: list[Any], timeout: float, answer: Any) -> bool:
    """True if ``path``'s ACL had to be (and was) fixed; ``answer``: get_acls asked."""
    for _ in range(3):
        try:
            acl, stat = answer.get(timeout=max(timeout, 0.0))
        except NoNodeError:
            return False  # lelect creates it, with its own ACL
        if not foreign_rights(acl, ours):
            return False
        try:
            session.call("set_acls", path, ours, version=stat.aversion, timeout=timeout)
        except BadVersionError:  # changed meanwhile (another lelect fixing it too): look again
            answer = session.client.get_acls_async(path)
            continue
        except NoAuthError:
            raise ConfigError(
                f"ZooKeeper node {path} has ACL {acl_text(acl)}: clients without lelect's"
                " credentials may change it, and lelect may not fix it (no ADMIN right);"
                f" have its owner set it to {acl_text(ours)} or delete it"
            ) from None
        log.warning("ZooKeeper node %s had ACL %s; lelect set it to %s", path,
                    acl_text(acl), acl_text(ours))
        return True
    raise ConfigError(f"the ACL of ZooKeeper node {path} keeps changing: who else manages it?")


def _refuse_outside_contenders(session: ZooKeeperSession, paths: ElectionPaths, ours: list[Any],
                               timeout: float) -> None:
    """While the election was open to all, anybody could enter it: a contender whose
    node is not lelect's to change came from outside the credentials."""
    try:
        children = session.call("get_children", paths.contenders, timeout=timeout)
    except NoNodeError:
        return
    for child in sorted(children):
        path = paths.contender(child)
        try:
            acl, _ = session.call("get_acls", path, timeout=timeout)
        except NoNodeError:
            continue  # gone meanwhile
        if foreign_rights(acl, ours):
            raise ConfigError(
                f"ZooKeeper node {paths.contenders} was open to clients without lelect's"
                f" credentials (lelect has now fixed its ACL), and contender {path} (ACL"
                f" {acl_text(acl)}) may be one of theirs: check it, delete it, then try again"
            )
