"""The command-line application of deconv_ext: ``deconv-ext`` / ``python -m deconv_ext``.

Modules: ``cli`` (argument parsing, the ``deblur`` command), ``demo``,
``bench``, ``info``, ``image_io`` (image files), ``psf_spec`` (``--psf``
strings), ``options`` (device and solver options shared by the commands),
``errors`` (one-line errors and the hint for missing optional packages).

The library itself never imports this package. ``deblur`` and ``demo`` need
the optional packages of the ``cli`` extra (``pip install "deconv_ext[cli]"``).
"""
