"""What a deployment's ClientApp and the server agree on, with no torch: the record that carries a
message, where the run's settings and a node's worker are named, where a client's memory lives in
``context.state`` (when the node keeps no folder of it: :mod:`emfl.flower.memory`), and the reply
to one message (:func:`reply_to`)."""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message, RecordDict

__all__ = ["reply_to", "settings_from", "memory_key", "RECORD", "SETTINGS_KEY", "NODE_KEY"]

RECORD = "emfl"  # the ConfigRecord that carries a message
SETTINGS_KEY = "emfl-settings"  # run-config key: the run's settings (JSON text, or the path of a JSON file)
NODE_KEY = "emfl-node"  # node-config key: the Unix socket of the node's worker


def memory_key(s: int) -> str:
    """Where client ``s``'s memory lives in ``context.state``."""
    return f"emfl-memory-{int(s)}"


def settings_from(context: Context) -> dict:
    """The run's settings from Flower's run config (JSON text; a file path is read)."""
    value = context.run_config.get(SETTINGS_KEY)
    if not value:
        raise ValueError(f"the run config has no '{SETTINGS_KEY}' (the run's emfl settings); "
                         "start runs with `python -m emfl flower`")
    if str(value).lstrip().startswith("{"):
        return json.loads(value)
    with open(value) as f:
        return json.load(f)


def reply_to(msg: Message, context: Context, compute, store=None) -> Message:
    """The reply to one of the server's messages: ``compute(fields, memory) -> (reply, memory)``
    trains the client (``fields``: the message's record as a dict; ``memory``: the client's
    ``.npz`` bytes or None; a returned memory of None leaves the stored one as it is).  The
    client's memory lives in ``store`` (a :class:`emfl.flower.memory.ClientMemory`, on the node's
    disk) if given, else in the node's ``context.state``."""
    rec = msg.content[RECORD]
    fields = {k: rec[k] for k in rec.keys()}
    s, rnd = int(fields["client"]), int(fields["round"])
    key = memory_key(s)
    if store is not None:
        memory = store.recall(s, rnd)
    else:
        memory = context.state[key]["npz"] if key in context.state else None
    reply, memory = compute(fields, memory)
    if memory is not None:
        if store is not None:
            store.keep(s, rnd, memory)
        else:
            context.state[key] = ConfigRecord({"npz": memory})
    return Message(content=RecordDict({RECORD: ConfigRecord(reply)}), reply_to=msg)
