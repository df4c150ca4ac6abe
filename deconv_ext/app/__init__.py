"""The command-line application of deconv_ext: ``deconv-ext`` / ``python -m deconv_ext``.

Modules: ``cli`` (argument parsing, the ``deblur`` command), ``demo``,
``bench``, ``info``, ``image_io`` (image files: header checks, memory maps,
atomic writes), ``tiled`` (``deblur`` of images larger than memory: tiled
files, Zarr through Dask), ``psf_spec`` (``--psf`` strings), ``options``
(device and solver options shared by the commands), ``errors`` (one-line
errors, the hints for missing optional packages, clean exit on signals).

The library itself never imports this package. ``deblur`` and ``demo`` need
the optional packages of the ``cli`` extra (``pip install "deconv_ext[cli]"``);
``deblur`` of ``.zarr`` arrays needs the ``dask`` extra too.
"""
