"""Server ranks: the generic protocol, the EASGD centre, the parameter server.

* :mod:`.protocol`: tags, :class:`~.protocol.Shards`, the message loop
  (:class:`~.protocol.Server`) and the worker side (:class:`~.protocol.Client`);
* :mod:`.center`: the centre variable (pull, push, push-pull);
* :mod:`.params`: the parameter server (K-sync, K-async, K-batch-*).

Update math lives in the algorithms (:mod:`mpisgd.algorithms`); these
modules move and add bytes.
"""
