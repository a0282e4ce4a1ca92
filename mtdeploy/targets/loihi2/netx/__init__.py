"""The NetX backend's writer side: MT-SNNs as HDF5 files stock lava-dl ``netx`` loads.

See docs/netx.md. Modules:

* ``schema``: what the stock loader accepts, as findings; reading a file's raw layers. No Lava.
* ``kinds``: the per-kind table, how each node kind reads from and writes to NetX layers.
* ``neurons``: the stock CUBA neuron group standing for each population kind.
* ``plan``: a graph's stock layers and the record of how a stock run reads them.
* ``writer``: the HDF5 file (``/layer`` plus the ``/mtdeploy`` extension), written atomically.

The reader is a front end (mtdeploy.frontends.netx); it uses this package, never the reverse.
Nothing here imports Lava.
"""
