"""mtdeploy: deploy mixed-timestep spiking neural networks on Loihi-style chips."""

from mtdeploy.version import __version__  # noqa: F401

from mtdeploy import kinds  # noqa: E402,F401  (registers every node kind with the IR)


def compile(model, input_shape=None, target="loihi2", **options):  # noqa: A001 - mirrors the CLI verb
    """Compile a QCFS model (module, path, or IR graph) for ``target``; see :mod:`mtdeploy.api`."""
    # Imported on first use: the API pulls in every backend.
    from mtdeploy.api import compile_model

    return compile_model(model, input_shape=input_shape, target=target, **options)
