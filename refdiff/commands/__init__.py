"""The commands of ``refdiff``: one module each (``demo``, ``train``, ``export`` with ``check``,
``sample``, ``eval``), each with ``add_parser(subparsers)`` and the function it runs.

They are the top floor of the house: they parse the edges (flags, files) into settings and call
the library. Each imports its heavy dependencies (torch, onnxruntime) only when it runs, so
``refdiff --help`` is instant and ``refdiff sample`` never imports torch.
"""
