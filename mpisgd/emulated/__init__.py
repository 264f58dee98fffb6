"""An emulated cluster on one machine (``mpisgd cluster``, docs/cluster.md): network
namespaces as nodes (:mod:`~mpisgd.emulated.hosts`), the MPI's own launcher starting
ranks in them (:mod:`~mpisgd.emulated.launch`), and the registry that leaves the host as
it was found (:mod:`~mpisgd.emulated.registry`)."""
