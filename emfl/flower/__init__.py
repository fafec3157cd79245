"""emfl's algorithms on Flower (``flwr`` 1.4x, the Message API): the same algorithm modules, run
by Flower's simulation or by its deployment runtime (a SuperLink and SuperNodes).

What maps to what:

* the **server** of an algorithm (``server_message``, ``message_to``, ``m_step``) runs in a Flower
  ``ServerApp`` (:func:`emfl.flower.apps.make_server_app`): an :class:`~emfl.nn.engine.Engine`
  without clients (:meth:`~emfl.nn.engine.Engine.begin_round` and
  :meth:`~emfl.nn.engine.Engine.end_round`) inside the runner's loop, so that checkpoints,
  ``--resume`` and the run JSON are those of ``python -m emfl run``;
* the **client** (``client_update``) runs in a Flower ``ClientApp``
  (:func:`emfl.flower.apps.make_client_app`; in a deployment inside each node's long-lived worker,
  :mod:`emfl.flower.node`, which imports and reads its data once), on the same data partition,
  with the same random streams (seeded by run seed, round and client) and its memory
  (``ClientResult.memory``: what a client keeps between the rounds it takes part in, a tensor or a
  dict of tensors) on the node's disk, one file per client and round, where a resumed run finds
  it (:mod:`emfl.flower.memory`); what the server keeps of each client's replies
  (``Algorithm.remember``: a personal mask the client sent) is the server's, in its checkpoint;
* every **message** travels as one ``bytes`` value in a ``ConfigRecord``, encoded by
  :mod:`emfl.nn.wire`: exactly the ``nbytes`` the engine counts (a sparse message stays sparse);
  its form (kind and lengths), the round, the client's index and the diagnostics a real server
  would not need (loss, local accuracy) travel beside it; what a receiver knows itself and the
  wire leaves out (the model's group map, a sub-model's units, a known mask) comes from the
  algorithm's ``receiver(job, sent)``, so this package names no algorithm and no message type;
* client ``s`` of the data set is served by SuperNode ``s mod N`` (the nodes in the order of
  their ids), so that a few SuperNodes play the paper's 100 or 3,597 clients.

:func:`simulate` runs Flower's simulation in this process; :mod:`emfl.flower.deploy` starts a
SuperLink and SuperNodes (on 127.0.0.1, or across machines with TLS and SuperNode keys:
:mod:`emfl.flower.security`), all under one guard (:mod:`emfl.flower.guard`), and submits the run
with ``flwr run``.  ``flwr`` is an
optional extra: ``pip install -e '.[flower]'``; the rest of emfl never imports it.  A message type
without a wire form (one a new algorithm defines without ``to_wire``) cannot travel: such a run
stops at its first message with an error that says to use ``python -m emfl run``.
"""

from __future__ import annotations

from emfl.flower.errors import FlowerError, require_flower

__all__ = ["require_flower", "simulate", "FlowerError"]


def simulate(config, out, supernodes: int = 2, data=None, data_dir=None, **kw) -> dict:
    """Run ``config`` under Flower's simulation with ``supernodes`` virtual SuperNodes; see
    :func:`emfl.flower.apps.simulate`."""
    from emfl.flower.apps import simulate as _simulate

    return _simulate(config, out, supernodes=supernodes, data=data, data_dir=data_dir, **kw)
