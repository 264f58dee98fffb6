"""The command-line layer: ``mpisgd train|report|topology`` and the run record.

* :mod:`.cli`: the parser and the subcommands (each imports only what it needs);
* :mod:`.config`: :class:`~.config.TrainConfig`, YAML files and flags;
* :mod:`.train`: the training driver behind ``mpisgd train``;
* :mod:`.record`: the HDF5 run record; :mod:`.report`: curves and tables from records.

The library (:mod:`mpisgd.algorithms` and below) never imports from here.
"""
