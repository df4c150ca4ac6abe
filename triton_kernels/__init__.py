"""Triton GPU kernels of deconv_ext (shipped as ``deconv_ext.triton_kernels``).

Each public launcher has the name and signature of the op it implements
(``torch.ops.deconv_ext.<name>``); ``deconv_ext._ops`` registers them as the
ops' CUDA kernels. No ``torch.library`` code lives here.
"""
OP_NAMES: tuple = ()
