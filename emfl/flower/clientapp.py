"""The ClientApp a deployment runs: a few milliseconds of work per message, none of it training.

Flower starts a new ``flwr-clientapp`` process for every message a SuperNode receives.  Importing
torch and emfl's engine and reading CIFAR-10 in each would cost seconds per client per round, so
this module imports neither (standard library and Flower only): it hands the message to its
node's **worker** (:mod:`emfl.flower.node`, a process that imports once, reads the node's data
once and trains the node's clients one after another) over the Unix socket named in the node's
config (``emfl-node``), and writes the worker's reply back.  Without a worker (``emfl-node``
unset: a SuperNode started by hand) it trains in its own process, as Flower's examples do.

What a client keeps between the rounds it takes part in (its *memory*) is the worker's to keep
(on the node's disk: :mod:`emfl.flower.memory`), so that this ClientApp never writes
``context.state``: several of its processes may then serve one node at the same time (the server
sends a whole round at once), each handing its client to the worker, which trains them one after
another.
"""

from __future__ import annotations

import json

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from emfl.flower import frames
from emfl.flower.protocol import NODE_KEY, reply_to, settings_from
from emfl.flower.supernode import PULLERS, quick_pulls

__all__ = ["client_app"]


def _compute(context: Context):
    settings = settings_from(context)
    address = context.node_config.get(NODE_KEY)
    if not address:
        from emfl.flower.apps import train_fields

        return lambda fields, memory: train_fields(settings, fields, memory)

    def via_worker(fields, memory):
        reply = frames.call(address, {**fields, "settings": json.dumps(settings, sort_keys=True)})
        if "error" in reply:
            raise RuntimeError(f"the node's worker (pid {reply.get('pid')}) failed: {reply['error']}")
        return {k: v for k, v in reply.items() if k != "pid"}, None  # the worker keeps the client's memory

    return via_worker


client_app = ClientApp()
quick_pulls(where=PULLERS[:1])  # this process pulls its message from the SuperNode as soon as it is there


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    return reply_to(msg, context, _compute(context))

